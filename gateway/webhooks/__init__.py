"""Signed webhooks (issue #15 part 4; docs/events.md "Webhooks").

A tenant admin subscribes an HTTPS URL to the tenant's events; the gateway POSTs each
event there, signed the Standard Webhooks way, in stream order, at least once.

    keys           Redis names (the subscriptions, each one's position and lease)
    signing        the ``whsec_`` secret and the ``webhook-signature`` header
    subscriptions  the subscription record and the checks of what an admin sends
    store          subscriptions, positions and leases in Redis
    destinations   where a delivery may connect (the SSRF rules, on the project's
                   destination policy)
    client         one HTTP/1.1 POST (h11, sans-I/O) over a checked connection
    delivery       one subscription's loop: read from the stream, send, retry, disable
    dispatcher     the node's side: which subscriptions it holds (leases), their tasks
    metrics        the Prometheus families of the node's deliveries
"""
