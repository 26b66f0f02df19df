"""A user's own settings for the web client, kept with the user directory in Redis.

Small on purpose: a few booleans a person changes from the client, each with a default,
read as a whole (``GET /v1/me``) and changed by ``PUT /v1/me/settings``. Anything
unknown or of the wrong type is refused with a message naming the field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class UserSettings:
    # Open the screen-pop URL of an incoming call by itself, not only on a click.
    auto_open_crm: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str | None) -> UserSettings:
        """Stored settings; a field missing, unknown or malformed reads as its default
        (a setting added later, or one written by an older version)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except ValueError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in names and isinstance(v, bool)}
        return cls(**kept)

    def changed(self, update: object) -> UserSettings:
        """These settings with ``update`` (a JSON object of some fields) applied; raises
        ValueError whose message names the offending field."""
        if not isinstance(update, dict):
            raise ValueError("the body must be a JSON object")
        known = [f.name for f in fields(self)]
        for name, value in update.items():
            if name not in known:
                shown = ", ".join(known)
                raise ValueError(f"{json.dumps(name)}: not a setting (settings: {shown})")
            if not isinstance(value, bool):
                raise ValueError(f"{name}: must be true or false")
        return replace(self, **update)
