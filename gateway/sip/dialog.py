"""Dialog identity (RFC 3261 §12) and dialog states (RFC 4235 §3.7.1), sans I/O.

A dialog is identified by its Call-ID, the local tag and the remote tag (RFC 3261 §12).
Which of the From/To tags is "local" depends on the side: for the UAC the From tag is
local (§12.1.2), for the UAS the To tag is (§12.1.1). The helpers below take the header
values as strings so this module depends on nothing else.

Values are kept exactly as received: Call-ID is compared case-sensitively (§20.8) and
tags are opaque tokens that every element echoes byte for byte. An empty tag means "not
present": an RFC 2543 peer may omit the From tag, and a request creating a dialog has no
To tag yet (§12.2.1.1 treats a missing tag as null).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["DialogId", "DialogState", "uac_dialog_id", "uas_dialog_id"]


@dataclass(frozen=True, slots=True)
class DialogId:
    """(Call-ID, local tag, remote tag) seen from one side of the dialog."""

    call_id: str
    local_tag: str
    remote_tag: str

    def __post_init__(self) -> None:
        if not self.call_id:
            raise ValueError("a dialog needs a Call-ID")

    def reversed(self) -> DialogId:
        """The same dialog seen from the peer's side."""
        return DialogId(self.call_id, self.remote_tag, self.local_tag)

    @property
    def is_complete(self) -> bool:
        """Both tags known: an established (early or confirmed) dialog, not a request
        still waiting for the remote side's tag."""
        return bool(self.local_tag and self.remote_tag)


def uas_dialog_id(call_id: str, from_tag: str | None, to_tag: str | None) -> DialogId:
    """The dialog as the UAS (the request's recipient) sees it: local = To tag."""
    return DialogId(call_id, to_tag or "", from_tag or "")


def uac_dialog_id(call_id: str, from_tag: str | None, to_tag: str | None) -> DialogId:
    """The dialog as the UAC (the request's sender) sees it: local = From tag."""
    return DialogId(call_id, from_tag or "", to_tag or "")


class DialogState(enum.Enum):
    """RFC 4235 §3.7.1 dialog states (the dialog-info "state" element values)."""

    TRYING = "trying"  # request sent or received, no response yet
    PROCEEDING = "proceeding"  # a provisional response without To tag
    EARLY = "early"  # a provisional response with To tag
    CONFIRMED = "confirmed"  # a 2xx
    TERMINATED = "terminated"  # failed, cancelled or hung up

    @property
    def is_final(self) -> bool:
        return self is DialogState.TERMINATED
