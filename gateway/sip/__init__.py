"""Sans-I/O SIP: messages, URIs, headers, transactions, dialogs, digest.

Imports nothing of the project. Bytes in, objects and bytes out."""
