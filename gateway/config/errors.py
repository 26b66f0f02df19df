"""The one exception the configuration layer raises."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot be accepted.

    ``key`` is the dotted path of the offending setting, array indices included
    (``tenants[0].users[2].password``); for an environment override it also names the
    variable (``SIPGW_SIP__T1 (sip.t1)``). ``problem`` says what is wrong, in words an
    operator can act on. ``str(err)`` is ``"<key>: <problem>"``. Messages never quote a
    password or a secret.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem
