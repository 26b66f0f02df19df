"""The one error of the SIP parsing layer.

A message that cannot be accepted raises `SIPParseError`. The error carries what the
caller needs to react without knowing the parser's internals:

- `status`: the response code to answer a *request* with (RFC 3261 §21: 400 Bad
  Request, 413/513 for oversize messages, 414, 416, 420, 483, 501, 505 …), or `0`,
  meaning "drop silently". A malformed *response* can never be answered (RFC 3261
  §18.1.2 / RFC 4475 §3.1.2.5 and §3.1.2.19), so every error about a response has
  status 0.
- `str(err)`: a short ASCII reason phrase, no CR/LF, safe to put straight into the
  Status-Line of the error response (RFC 3261 §25.1 Reason-Phrase), naming the header
  when one is at fault ("Bad Via header: empty parameter").
"""

from __future__ import annotations

# Long enough to say which header and why; short enough for a reason phrase.
_MAX_REASON = 120


def _safe_text(text: str) -> str:
    """Printable ASCII only: the text ends up in a Status-Line (RFC 3261 §25.1)."""
    if text.isascii() and text.isprintable():
        return text[:_MAX_REASON]
    # Error path only: a per-character loop is fine here.
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)[:_MAX_REASON]


class SIPParseError(ValueError):
    """A SIP message (or a part of one) that cannot be accepted.

    `reason` becomes `str(err)`; `status` is the response code for a request (0 means
    drop); `header` names the offending header field, if any; `detail` is the reason
    without the "Bad X header:" prefix, for callers that re-wrap the error (a URI
    error inside a To header becomes "Bad To header: ...").
    """

    reason: str
    status: int
    header: str | None
    detail: str

    def __init__(
        self,
        reason: str,
        status: int = 400,
        *,
        header: str | None = None,
        detail: str | None = None,
    ) -> None:
        if status != 0 and not 400 <= status <= 699:
            raise ValueError(f"SIPParseError status must be 0 or 400-699, not {status}")
        self.reason = _safe_text(reason)
        self.status = status
        self.header = header
        self.detail = self.reason if detail is None else _safe_text(detail)
        super().__init__(self.reason)

    def __str__(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return f"SIPParseError({self.reason!r}, {self.status}, header={self.header!r})"

    @property
    def drop(self) -> bool:
        """True when the message must be discarded without any response."""
        return self.status == 0

    def with_status(self, status: int) -> SIPParseError:
        """The same error with another status (e.g. 0 once we know it was a response)."""
        if status == self.status:
            return self
        return SIPParseError(self.reason, status, header=self.header, detail=self.detail)


def bad_header(header: str | None, detail: str, status: int = 400) -> SIPParseError:
    """`SIPParseError("Bad <header> header: <detail>")`, the common shape of header errors."""
    reason = f"Bad {header} header: {detail}" if header else f"Bad header: {detail}"
    return SIPParseError(reason, status, header=header, detail=detail)
