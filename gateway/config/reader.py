"""Reading raw TOML data with precise error keys, and applying SIPGW_* overrides.

A ``Value`` is one raw value plus its dotted key path (``tenants[0].users[2].password``);
a ``Table`` is a TOML table being read. Every problem becomes a ``ConfigError`` naming
the key, so the builders in ``loader`` and ``profiles`` only say *what* is wrong.
"""

from __future__ import annotations

import datetime
import difflib
import itertools
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway import native
from gateway.config.errors import ConfigError
from gateway.config.syntax import describe, show

T = TypeVar("T")

ENV_PREFIX = "SIPGW_"
ENV_SEPARATOR = "__"
# Variables with the prefix that are not settings (checked before the override rules).
ENV_NOT_SETTINGS = frozenset({"SIPGW_CONFIG", *native.ENV_VARIABLES})


@dataclass
class Context:
    """What every value of one load shares: where relative paths start, env origins."""

    base_dir: Path  # relative paths written in the file are relative to the file
    env_vars: dict[str, str] = field(default_factory=dict)  # dotted key -> variable name
    env_raw: dict[str, str] = field(default_factory=dict)  # dotted key -> variable text

    def env_var_for(self, key: str) -> str | None:
        """The variable that set ``key``, one of its parents (the nearest), or else
        one of its children (a variable that turned a value into a table)."""
        best: str | None = None
        for set_key in self.env_vars:
            covers = key == set_key or key.startswith((set_key + ".", set_key + "["))
            if covers and (best is None or len(set_key) > len(best)):
                best = set_key
        if best is None:
            best = next((k for k in self.env_vars if k.startswith((key + ".", key + "["))), None)
        return None if best is None else self.env_vars[best]

    def attribute(self, error: ConfigError) -> ConfigError:
        """Name the environment variable in an error about a key it set."""
        var = self.env_var_for(error.key)
        return error if var is None else ConfigError(f"{var} ({error.key})", error.problem)


@dataclass(frozen=True)
class Value:
    """One raw value with its key path."""

    data: object
    key: str
    ctx: Context

    def error(self, problem: str) -> ConfigError:
        return ConfigError(self.key, problem)

    @property
    def from_env(self) -> bool:
        return self.ctx.env_var_for(self.key) is not None

    def text(self, *, secret: bool = False) -> str:
        """A string. A variable's text is taken as it is even if it parsed as TOML
        (``SIPGW_NODE__NAME=123`` names the node "123"). ``secret``: never echo it."""
        if isinstance(self.data, str):
            return self.data
        raw = self.ctx.env_raw.get(self.key)
        if raw is not None:
            return raw
        raise self.error(
            "must be a string" if secret else f"must be a string, got {describe(self.data)}"
        )

    def parse(self, parser: Callable[[str], T]) -> T:
        """Parse the string with ``parser``, whose ValueError message is the problem."""
        text = self.text()
        try:
            return parser(text)
        except ValueError as exc:
            raise self.error(str(exc)) from None

    def boolean(self) -> bool:
        if not isinstance(self.data, bool):
            raise self.error(f"must be true or false, got {describe(self.data)}")
        return self.data

    def number(self, *, allow_zero: bool = False) -> float:
        """A finite float (TOML integers accepted) above 0, or also 0 with allow_zero."""
        data = self.data
        if isinstance(data, int | float) and not isinstance(data, bool):
            number = float(data)
            if math.isfinite(number) and (number > 0 or (allow_zero and number == 0)):
                return number
        what = "a non-negative number" if allow_zero else "a positive number"
        raise self.error(f"must be {what}, got {describe(data)}")

    def integer(self, low: int, high: int | None = None) -> int:
        data = self.data
        if (
            isinstance(data, int)
            and not isinstance(data, bool)
            and low <= data
            and (high is None or data <= high)
        ):
            return data
        if high is not None:
            raise self.error(f"must be an integer from {low} to {high}, got {describe(data)}")
        what = "a positive integer" if low == 1 else f"an integer of at least {low}"
        raise self.error(f"must be {what}, got {describe(data)}")

    def choice(self, options: Iterable[str], *, fold: Callable[[str], str] = str) -> str:
        """One of ``options`` (after applying ``fold``, e.g. ``str.upper``)."""
        options = tuple(options)
        if isinstance(self.data, str) or self.key in self.ctx.env_raw:
            picked = fold(self.text())
            if picked in options:
                return picked
        listed = ", ".join(show(o) for o in options)
        quoted = "" if isinstance(self.data, str) else "a string, "
        raise self.error(f"must be {quoted}one of {listed}, got {describe(self.data)}")

    def path(self) -> Path:
        """A filesystem path; relative ones start at the file's directory, or at the
        current directory when the value came from an environment variable."""
        path = Path(self.text()).expanduser()
        if path.is_absolute():
            return path
        return (Path.cwd() if self.from_env else self.ctx.base_dir) / path

    def items(self, *, allow_single: bool = False) -> list[Value]:
        """The elements of an array, each with its ``key[i]`` path.

        ``allow_single`` takes a lone string as a one-element array (handy for
        ``SIPGW_SIP__LISTEN=udp:0.0.0.0:5060``)."""
        data = self.data
        if allow_single and isinstance(data, str):
            return [self]
        if not isinstance(data, list):
            raise self.error(f"must be an array, got {describe(data)}")
        return [Value(item, f"{self.key}[{i}]", self.ctx) for i, item in enumerate(data)]

    def table(self) -> Table:
        if not isinstance(self.data, dict):
            raise self.error(f"must be a table, got {describe(self.data)}")
        return Table(self.data, self.key, self.ctx)

    def tables(self) -> list[Table]:
        if not isinstance(self.data, list) or not all(isinstance(d, dict) for d in self.data):
            name = re.sub(r"\[[0-9]+\]", "", self.key)  # tenants[0].users -> tenants.users
            raise self.error(f"must be an array of tables ([[{name}]]), got {describe(self.data)}")
        return [item.table() for item in self.items()]


class Table:
    """A TOML table being read. Keys not in the allowed set are errors (typos!)."""

    def __init__(self, data: Mapping[str, object], key: str, ctx: Context) -> None:
        self.data = data
        self.key = key
        self.ctx = ctx

    def key_of(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def check_keys(self, allowed: Iterable[str]) -> None:
        """Refuse unknown keys, suggesting the closest known one."""
        allowed = list(allowed)
        for name in self.data:
            if name in allowed:
                continue
            close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
            hint = f'did you mean "{close[0]}"?' if close else "known: " + ", ".join(allowed)
            raise ConfigError(self.key_of(name), f"unknown key ({hint})")

    def get(self, name: str) -> Value | None:
        if name not in self.data:
            return None
        return Value(self.data[name], self.key_of(name), self.ctx)

    def require(self, name: str, hint: str = "") -> Value:
        value = self.get(name)
        if value is None:
            raise ConfigError(self.key_of(name), f"required{hint}")
        return value

    def table(self, name: str) -> Table:
        """A sub-table; an absent one reads as empty (all defaults)."""
        value = self.get(name)
        return Table({}, self.key_of(name), self.ctx) if value is None else value.table()

    def read(self, readers: Mapping[str, Callable[[Value], Any]]) -> dict[str, Any]:
        """Check the keys against ``readers`` and read the present ones, in order.

        Absent keys are left out, so the dataclass defaults apply."""
        self.check_keys(readers)
        present = ((name, self.get(name)) for name in readers)
        return {name: readers[name](value) for name, value in present if value is not None}


def apply_env(raw: MutableMapping[str, Any], env: Mapping[str, str], ctx: Context) -> None:
    """Apply every ``SIPGW_*`` variable to the raw settings, recording where it went.

    ``SIPGW_SIP__T1=0.6`` sets ``sip.t1``: ``__`` separates nesting levels, names are
    lower-cased, a numeric segment indexes an existing array element
    (``SIPGW_TENANTS__0__NAME``). The text is read as a TOML value when it is one
    (``0.6``, ``true``, ``"x"``, ``["udp:127.0.0.1:5060"]``), else taken as a string.
    An empty value removes the key, so its default applies. Parents are applied before
    children (sorted order), so a table override can be refined by a nested one.
    """
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_SETTINGS:
            continue
        segments = var[len(ENV_PREFIX) :].lower().split(ENV_SEPARATOR)
        if not all(segments):
            raise ConfigError(var, "empty name segment (nesting is written with __)")
        container, key = _env_parent(raw, segments, var)
        last = segments[-1]
        key = _join(key, last, container)
        _env_set(container, last, env[var], var, key)
        ctx.env_vars[key] = var
        ctx.env_raw[key] = env[var]


def _env_parent(
    raw: MutableMapping[str, Any], segments: list[str], var: str
) -> tuple[MutableMapping[str, Any] | list[Any], str]:
    """Walk to the container of the last segment, creating missing tables."""
    container: MutableMapping[str, Any] | list[Any] = raw
    key = ""
    for segment, after in itertools.pairwise(segments):
        key = _join(key, segment, container)
        if isinstance(container, list):
            child = container[_index(container, segment, var, key)]
        elif segment in container:
            child = container[segment]
        elif after.isdigit():  # an index into an array that is not there
            raise ConfigError(f"{var} ({key})", "no such array element (the array is not set)")
        else:
            child = container[segment] = {}
        if not isinstance(child, dict | list):
            raise ConfigError(f"{var} ({key})", "is a value, not a table")
        container = child
    return container, key


def _env_set(
    container: MutableMapping[str, Any] | list[Any], last: str, text: str, var: str, key: str
) -> None:
    if isinstance(container, list):
        index = _index(container, last, var, key)
        if text == "":
            raise ConfigError(f"{var} ({key})", "an array element cannot be removed")
        container[index] = parse_env_value(text)
    elif text == "":
        container.pop(last, None)
    else:
        container[last] = parse_env_value(text)


def _join(key: str, segment: str, container: object) -> str:
    if isinstance(container, list):
        return f"{key}[{segment}]"
    return f"{key}.{segment}" if key else segment


def _index(array: list[Any], segment: str, var: str, key: str) -> int:
    if not segment.isdigit() or int(segment) >= len(array):
        raise ConfigError(f"{var} ({key})", f"no such array element (the array has {len(array)})")
    return int(segment)


def parse_env_value(text: str) -> object:
    """A variable's text as a TOML value if it is exactly one, else the text itself."""
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    value = parsed.get("value")
    # More keys means the text smuggled a newline; dates are no setting's type.
    if len(parsed) != 1 or isinstance(value, datetime.date | datetime.time):
        return text
    return value


def plain_text(v: Value) -> str:
    """Non-empty text without control characters (it may end up in a header)."""
    text = v.text()
    if not text.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise v.error(f"must be non-empty text without control characters, got {describe(text)}")
    return text


def existing_file(v: Value) -> Path:
    """A path (see ``Value.path``) that names an existing file."""
    path = v.path()
    if not path.is_file():
        raise v.error(f"file not found: {path}")
    return path
