"""Click-to-dial: the gateway as a SIP party, not only a proxy.

`user_agent.py` is a small user agent core beside the proxy: it places INVITEs
(`CallAttempt`, forked to every contact), keeps the dialogs it makes (`Dialog`), and
answers what arrives in them; it shares the proxy's transport, timer queue and
transaction machines. `originate.py` is the dial requests of `POST /v1/calls` on top of
it: ring the user's own phone, then connect it to the destination (REFER, or RFC 3725
3PCC), each request following the `DIAL_TRANSITIONS` table. Sans-I/O like the proxy:
everything runs inside the proxy's synchronous world (`ProxyServer.run`).
"""
