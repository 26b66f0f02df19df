"""A tenant's second-factor policy: ``[tenants.totp]`` (docs/security.md, "Second factor").

    policy = "off" | "optional" | "admins" | "everyone"
    issuer = "sipgw"       # the name authenticator apps show beside the account

- ``off``: passwords only; enrolments are refused, and existing ones are ignored at
  login (turning the policy back on makes them count again).
- ``optional`` (the default): a user may enrol; an enrolled user gives a code at login.
- ``admins``: as optional, and an admin without a second factor must enrol before the
  login gives a token.
- ``everyone``: every user must.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.config.reader import Table, Value, plain_text

TotpPolicy = Literal["off", "optional", "admins", "everyone"]
TOTP_POLICIES: tuple[TotpPolicy, ...] = ("off", "optional", "admins", "everyone")


@dataclass(frozen=True)
class SecondFactor:
    policy: TotpPolicy = "optional"
    issuer: str = "sipgw"

    @property
    def enabled(self) -> bool:
        return self.policy != "off"

    def required_for(self, role: str) -> bool:
        """True when a user of ``role`` must have a second factor to get a token."""
        return self.policy == "everyone" or (self.policy == "admins" and role == "admin")


def second_factor(t: Table) -> SecondFactor:
    """``[tenants.totp]``; absent: optional, issuer "sipgw"."""
    t.check_keys(("policy", "issuer"))
    policy_value, issuer_value = t.get("policy"), t.get("issuer")
    policy = "optional" if policy_value is None else policy_value.choice(TOTP_POLICIES)
    return SecondFactor(
        policy=next(p for p in TOTP_POLICIES if p == policy),
        issuer="sipgw" if issuer_value is None else _issuer(issuer_value),
    )


def _issuer(v: Value) -> str:
    issuer = plain_text(v)
    if ":" in issuer or len(issuer) > 64:
        # The issuer is the label's prefix ("Issuer:account"): a colon would split it.
        raise v.error("must be at most 64 characters, without ':'")
    return issuer
