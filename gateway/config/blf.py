"""Busy lamp field settings (gateway/blf, RFC 4235 dialog-info): the global ``[blf]``
table and each tenant's ``[tenants.blf]``.

Who called is personal data shown to colleagues (on a desk phone's screen, which
anyone passing by reads), so a tenant shows nothing of the remote party unless it says
so: ``caller = "none"`` by default, like Asterisk's ``notifycid = no``. ``"number"``
shows the number as signalled; ``"name"`` the recognized contact's name when caller
recognition found one, else the number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from gateway.config.errors import ConfigError
from gateway.config.reader import Table

CallerShown = Literal["none", "number", "name"]
CALLER_CHOICES: tuple[CallerShown, ...] = ("none", "number", "name")


@dataclass(frozen=True)
class BlfSettings:
    """``[blf]``: the gateway as notifier of its extensions' dialog state."""

    enabled: bool = True
    # Subscription durations (seconds): a shorter Expires is refused with 423 and
    # Min-Expires, a longer one is cut down; none given means default_expires (RFC 4235
    # §3.2: the dialog package's default is 3600).
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    # Live subscriptions of one process: per subscribing user, and per tenant.
    max_per_subscriber: int = 20
    max_per_tenant: int = 1000
    # Seconds of the tenant's event stream read when a process starts watching a tenant
    # (its first subscription): calls in progress then show at once.
    catch_up: float = 600.0


@dataclass(frozen=True)
class BlfPolicy:
    """``[tenants.blf]``: what a tenant's subscribers see of the remote party."""

    caller: CallerShown = "none"


def blf_settings(t: Table) -> BlfSettings:
    values = t.read(
        {
            "enabled": lambda v: v.boolean(),
            "min_expires": lambda v: v.integer(1, 86_400),
            "max_expires": lambda v: v.integer(1, 86_400),
            "default_expires": lambda v: v.integer(1, 86_400),
            "max_per_subscriber": lambda v: v.integer(1, 10_000),
            "max_per_tenant": lambda v: v.integer(1, 1_000_000),
            "catch_up": lambda v: v.number(allow_zero=True),
        }
    )
    settings = BlfSettings(**values)
    if settings.max_expires < settings.min_expires:
        raise ConfigError(
            t.key_of("max_expires"),
            f"must be at least min_expires ({settings.min_expires}), got {settings.max_expires}",
        )
    if not settings.min_expires <= settings.default_expires <= settings.max_expires:
        raise ConfigError(
            t.key_of("default_expires"),
            f"must be from min_expires ({settings.min_expires}) to max_expires "
            f"({settings.max_expires}), got {settings.default_expires}",
        )
    return settings


def blf_policy(t: Table) -> BlfPolicy:
    values = t.read({"caller": lambda v: cast(CallerShown, v.choice(CALLER_CHOICES))})
    return BlfPolicy(**values)
