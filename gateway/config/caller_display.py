"""``[tenants.caller_display]``: the recognized caller's name on the callee's phone.

A contact's name from the CRM, shown on a desk phone's screen, is personal data shown
to whoever stands by that phone, so a tenant shows nothing unless it says so
(``enabled = false`` by default). A phone profile may say which headers its phones
read (``caller_display`` in ``sip_profiles/*.toml``); the tenant's ``headers`` apply
to the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.errors import ConfigError
from gateway.config.reader import Table, Value

# Where a phone may read the caller's name: the From display-name (every phone), or an
# RFC 3325 P-Asserted-Identity (many desk phones prefer it when there is one).
DISPLAY_HEADERS = ("From", "P-Asserted-Identity")
_BY_LOWER = {name.lower(): name for name in DISPLAY_HEADERS}
MAX_WAIT_MS = 200.0  # a few ms is the point; more would hold every unknown caller's call


@dataclass(frozen=True)
class CallerDisplayPolicy:
    enabled: bool = False
    field: str = "name"  # the contact field shown; one of [tenants.recognition] fields
    headers: tuple[str, ...] = ("From",)  # where, for phones whose profile does not say
    # How long an INVITE may wait for Redis when the node's cache does not know the
    # caller; 0: a cache answer or nothing, the INVITE never waits.
    wait_ms: float = 0.0


def display_headers(v: Value) -> tuple[str, ...]:
    """A list of DISPLAY_HEADERS names (any case), in their canonical order; [] is
    allowed (a profile whose phones show no name)."""
    names: set[str] = set()
    for item in v.items():
        text = item.text()
        canonical = _BY_LOWER.get(text.lower())
        if canonical is None:
            choices = ", ".join(DISPLAY_HEADERS)
            raise ConfigError(item.key, f"must be one of {choices}, got {text!r}")
        names.add(canonical)
    return tuple(name for name in DISPLAY_HEADERS if name in names)


def caller_display_policy(t: Table, fields: tuple[str, ...]) -> CallerDisplayPolicy:
    """Read the table; ``fields`` are the tenant's stored contact fields."""
    values = t.read(
        {
            "enabled": lambda v: v.boolean(),
            "field": lambda v: v.text(),
            "headers": display_headers,
            "wait_ms": lambda v: v.number(allow_zero=True),
        }
    )
    policy = CallerDisplayPolicy(**values)
    if policy.field not in fields:
        raise ConfigError(
            t.key_of("field"),
            f"must be one of the stored contact fields ([tenants.recognition] fields: "
            f"{', '.join(fields)}), got {policy.field!r}",
        )
    if policy.wait_ms > MAX_WAIT_MS:
        raise ConfigError(
            t.key_of("wait_ms"), f"must be at most {MAX_WAIT_MS:g}, got {policy.wait_ms:g}"
        )
    if policy.enabled and not policy.headers:
        raise ConfigError(t.key_of("headers"), "must name at least one header when enabled")
    return policy
