"""The ``sipgw`` command: everything that runs on the operator's side.

    command   the parser, ``run`` and ``check-config`` (they start or read the server
              in this process), ``watch``
    admin     tenants, users, tokens: the security ``Directory`` on Redis, directly
    watch     WebSocket client of ``/v1/events``       } HTTP clients: they reach the
    dial      client of ``POST /v1/calls``              } gateway only over HTTP and
    sync/     the contact sync client (``sipgw sync``)  } import no server package
    demo      the demo's simulated phone and carrier calls (sipp, scenarios in
              gateway/demo/): it speaks SIP only and imports no server package either

No server package imports this one (pyproject's import-linter contracts).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The console script (``sipgw = "gateway.cli:main"``).

    Imported on call, not at the top: importing a client module (``gateway.cli.sync.plan``
    in each of the sync's spawned worker processes) runs this package's ``__init__``, and
    must not load the whole server (gateway.app) with it."""
    from gateway.cli.command import main as run

    return run(argv)
