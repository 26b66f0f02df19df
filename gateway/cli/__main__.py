"""``python -m gateway.cli``: the ``sipgw`` command without its console script (the
supervisor starts its workers so, and the tests run it so)."""

from gateway.cli import main

raise SystemExit(main())
