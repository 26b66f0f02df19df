"""``sipgw sync``: the contact sync client that runs beside a customer's data.

It reads contacts from a source (``sources``), keeps only the mapped fields
(``mapping``), normalizes numbers to E.164 and diffs them against a local state of
digests (``plan``, ``state``), then sends only upserts and deletes, in batches, to the
gateway's HTTPS API (``client``). ``run.sync`` is one run; docs/sync.md is the manual.
"""
