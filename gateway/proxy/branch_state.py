"""Where one INVITE branch stands towards its answer and its cancellation: the branch's
part of the §16.7 response context, as an explicit state table (like `calls/model.py`
for calls and `sip/transaction.py` for the §17 machines).

A branch is sent (TRYING); a provisional response makes it PROCEEDING; a final one, or
one made up locally (Timer C, a transport failure), makes it FINAL. Cancelling it
(another branch answered, the caller cancelled, Timer C) may not send a CANCEL before
a provisional response came (RFC 3261 §9.1): until then the wish is remembered
(CANCEL_WANTED) and the CANCEL goes out with the first provisional response. A final
response ends every state, whatever was wished or sent; anything later is absorbed.

Both the proxy's branches (`proxy/context.py`) and the click-to-dial user agent's
(`dial/user_agent.py`) follow this table: `advance` says where the branch goes and whether a
CANCEL must be sent now; the caller sends it.
"""

from __future__ import annotations

import enum
from typing import Final


class BranchState(enum.Enum):
    TRYING = "trying"  # sent, nothing heard yet
    PROCEEDING = "proceeding"  # a provisional response came
    CANCEL_WANTED = "cancel wanted"  # to be cancelled, waiting for a provisional (§9.1)
    CANCELLING = "cancelling"  # CANCEL sent, waiting for the INVITE's final response
    FINAL = "final"  # answered (or failed locally): nothing more to do

    __hash__ = object.__hash__  # members are singletons: identity hashing, in C

    @property
    def heard_provisional(self) -> bool:
        return self is BranchState.PROCEEDING or self is BranchState.CANCELLING


class BranchInput(enum.Enum):
    PROVISIONAL = "1xx"
    FINAL = "final"
    CANCEL = "cancel"

    __hash__ = object.__hash__


_S, _I = BranchState, BranchInput

# (state, input) → (next state, send a CANCEL now)
TABLE: Final[dict[tuple[BranchState, BranchInput], tuple[BranchState, bool]]] = {
    (_S.TRYING, _I.PROVISIONAL): (_S.PROCEEDING, False),
    (_S.TRYING, _I.CANCEL): (_S.CANCEL_WANTED, False),
    (_S.TRYING, _I.FINAL): (_S.FINAL, False),
    (_S.PROCEEDING, _I.PROVISIONAL): (_S.PROCEEDING, False),
    (_S.PROCEEDING, _I.CANCEL): (_S.CANCELLING, True),
    (_S.PROCEEDING, _I.FINAL): (_S.FINAL, False),
    (_S.CANCEL_WANTED, _I.PROVISIONAL): (_S.CANCELLING, True),
    (_S.CANCEL_WANTED, _I.CANCEL): (_S.CANCEL_WANTED, False),
    (_S.CANCEL_WANTED, _I.FINAL): (_S.FINAL, False),
    (_S.CANCELLING, _I.PROVISIONAL): (_S.CANCELLING, False),
    (_S.CANCELLING, _I.CANCEL): (_S.CANCELLING, False),
    (_S.CANCELLING, _I.FINAL): (_S.FINAL, False),
    (_S.FINAL, _I.PROVISIONAL): (_S.FINAL, False),
    (_S.FINAL, _I.CANCEL): (_S.FINAL, False),
    (_S.FINAL, _I.FINAL): (_S.FINAL, False),
}


def advance(state: BranchState, seen: BranchInput) -> tuple[BranchState, bool]:
    """The next state, and whether a CANCEL must be sent now."""
    return TABLE[state, seen]
