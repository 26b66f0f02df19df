"""Busy lamp field: the gateway as the RFC 4235 dialog-event notifier of its own
extensions, fed by the tenant's call events (docs/events.md#busy-lamp-field).

- ``dialog_info.py``: one call event → the dialog a watcher sees; the XML body.
- ``lines.py``: every extension's dialogs now, from the events.
- ``subscriptions.py``: a subscription and its NOTIFY flow as a state table.
- ``notifier.py``: the SIP side (SUBSCRIBE in, NOTIFY out through tm.py).

Sans-I/O like the proxy; `gateway/runtime/blf_feed.py` feeds it the bus's events.
"""
