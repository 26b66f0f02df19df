"""Where click-to-dial may call: a tenant's allowed and denied destination prefixes.

`POST /v1/calls` makes the gateway place a call on a user's behalf, paid by the tenant.
A stolen token, or a CRM that dials whatever a web page holds, must not reach premium-rate
numbers (toll fraud pays the fraudster per minute), so every tenant starts from a
built-in list of denied ranges, ``DEFAULT_DENY_PREFIXES``, and may add its own
(``[tenants.dial] deny_prefixes``) and exceptions (``allow_prefixes``).

One rule decides: **the longest matching prefix wins**; a number that matches none is
allowed. An ``allow_prefixes`` entry equal to a built-in one wins over it (that is how a
built-in range is allowed again). ``deny_prefixes = ["+"]`` denies every number, so
``allow_prefixes`` then lists all that may be called, while a more specific built-in
range inside an allowed one stays denied.

Prefixes starting with "+" match numbers in E.164 form (after normalization with the
tenant's region: "0900 123" in NL is +31900123); prefixes of digits (and * #) match
short numbers and service codes as dialled. A tenant's own extensions are always
allowed. See docs/click-to-dial.md for the list and its sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Premium-rate and international premium ranges, with what they are (docs/click-to-dial.md).
PREMIUM_RANGES: dict[str, str] = {
    "+31900": "NL premium rate (0900)",
    "+31906": "NL premium rate, adult (0906)",
    "+31909": "NL premium rate, entertainment (0909)",
    "+3290": "BE premium rate (090x)",
    "+3389": "FR premium rate (089x)",
    "+449": "UK premium rate (09x)",
    "+4470": "UK personal numbers (070), a common fraud target",
    "+4487": "UK revenue-sharing (087x)",
    "+49900": "DE premium rate (0900)",
    "+49137": "DE mass calling and televoting (0137)",
    "+49118": "DE directory enquiries (118xx)",
    "+1900": "NANP premium rate (1-900)",
    "+1976": "NANP premium rate, legacy (1-976)",
    "+870": "Inmarsat satellite",
    "+881": "Global Mobile Satellite System (Iridium, Globalstar, Thuraya…)",
    "+882": "International Networks (shared code, high termination rates)",
    "+883": "International Networks (shared code, high termination rates)",
    "+979": "International Premium Rate Service (ITU)",
}
DEFAULT_DENY_PREFIXES: tuple[str, ...] = tuple(PREMIUM_RANGES)

PREFIX = re.compile(r"\+[0-9]{0,15}|[0-9*#]{1,16}")


@dataclass(frozen=True)
class DialPolicy:
    """A tenant's click-to-dial destination prefixes (``[tenants.dial]``)."""

    allow_prefixes: tuple[str, ...] = ()
    deny_prefixes: tuple[str, ...] = ()  # besides DEFAULT_DENY_PREFIXES

    def refusal(self, dialled: str) -> str | None:
        """Why ``dialled`` (E.164 "+…", or a short number's digits) may not be called;
        None when it may. Extensions are the caller's business: do not pass them."""
        best: tuple[int, int, str] | None = None  # (length, rank, prefix): max decides
        # rank: a configured allow beats a built-in deny of the same length, and a
        # configured deny equals a configured allow never (the loader refuses that).
        for prefix, rank in (
            *((p, 0) for p in DEFAULT_DENY_PREFIXES),
            *((p, 1) for p in self.deny_prefixes),
            *((p, 2) for p in self.allow_prefixes),
        ):
            if dialled.startswith(prefix) and (prefix[:1] == "+") == (dialled[:1] == "+"):
                candidate = (len(prefix), rank, prefix)
                best = candidate if best is None or candidate > best else best
        if best is None or best[1] == 2:
            return None
        prefix = best[2]
        if best[1] == 0:
            return f"{dialled} is in a denied range ({prefix}: {PREMIUM_RANGES[prefix]})"
        return f"{dialled} is in a range this tenant denies ({prefix})"
