"""sipgw load benchmark harness (``python -m bench``): see bench/README.md.

Scenarios drive the real gateway process and the reference proxy (Kamailio) with sipp,
step the offered rate up until a step is no longer clean, and write JSON, Markdown and
PNG results under ``bench/results/``. Nothing here imports the gateway or the tests: the
harness talks to the products only over SIP, HTTP and /proc, like an operator would.
"""

SCHEMA = "sipgw-bench/1"
