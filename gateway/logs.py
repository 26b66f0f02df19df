"""Structured logging: one JSON object per line, secrets masked.

Fields passed with ``extra=`` become keys of the object. Any key that looks like a
credential is masked, whoever logs it, so a careless ``extra={"password": …}`` never
reaches a log file.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_SECRET_KEYS = re.compile(r"pass|secret|token|authorization|ha1|nonce|cookie", re.IGNORECASE)
# Credentials in a message's text, whoever logs it: in a URL's query (uvicorn's
# `"WebSocket /v1/events?ticket=…" [accepted]`; a ticket is single use, but the log
# outlives the page), in a header line (the websockets library logs every handshake
# header at DEBUG: `< authorization: Bearer …`), in a WebSocket subprotocol.
_SECRET_TEXT = (
    (re.compile(r"\b(ticket|token|access_token|password)=[^&\s\"']+", re.I), r"\1=***"),
    (re.compile(r"\b((?:proxy-)?authorization|cookie):[^\r\n]*", re.I), r"\1: ***"),
    (re.compile(r"\bsipgw\.bearer\.[A-Za-z0-9_-]+"), "sipgw.bearer.***"),
)
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


def _message(record: logging.LogRecord) -> str:
    text = record.getMessage()
    for pattern, mask in _SECRET_TEXT:
        text = pattern.sub(mask, text)
    return text


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {}
    for key, value in vars(record).items():
        if key in _RESERVED:
            continue
        fields[key] = "***" if _SECRET_KEYS.search(key) else value
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        stamp = time.strftime("%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {record.name}: {_message(record)}"
        if extra:
            line += f"  {extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
