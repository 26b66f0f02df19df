"""SIP peer profiles: one TOML file per kind of peer in ``sip_profiles/``.

A profile says how to read a caller's number from that peer, how to make it answer by
itself (click-to-dial), whether it can be REFERred, and how to recognize it by its
User-Agent. The file name (without .toml) is the profile's name.
"""

from __future__ import annotations

import re
import string
import tomllib
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.config.caller_display import display_headers
from gateway.config.errors import ConfigError
from gateway.config.model import USER_AGENT_PATTERN, Profile
from gateway.config.reader import Context, Table, Value
from gateway.config.syntax import show
from gateway.sip.digest import SUPPORTED_ALGORITHMS

try:  # phonenumbers is a dependency, but the config layer must not need it to load
    import phonenumbers

    _REGIONS: frozenset[str] | None = frozenset(phonenumbers.SUPPORTED_REGIONS)
except ImportError:  # pragma: no cover - exercised only without phonenumbers
    _REGIONS = None

_PROFILE_NAME = re.compile(r"[a-z0-9-]{1,32}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!%'*+.^_`|~-]+")  # an RFC 3261 token
_HEADER_LINE = re.compile(r"(?P<name>[A-Za-z0-9!%'*+.^_`|~-]+):[ \t]*(?P<value>[^\r\n]+)")
_PLACEHOLDERS = frozenset({"host"})
_AUTO_ANSWER_HEADER = {
    "call-info": "Call-Info",
    "answer-mode": "Answer-Mode",
    "alert-info": "Alert-Info",
}


def load_profiles(directory: Path, key: str) -> Mapping[str, Profile]:
    """Every ``*.toml`` in ``directory``, by name. ``key`` names the directory setting."""
    if not directory.is_dir():
        raise ConfigError(key, f"not a directory: {directory}")
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ConfigError(key, f"no profiles (*.toml) in {directory}")
    return types.MappingProxyType({file.stem: _load_profile(file) for file in files})


def _load_profile(file: Path) -> Profile:
    """One profile file; errors are keyed ``profiles.<name>.<key>`` and name the file."""
    key = f"profiles.{file.stem}"
    try:
        if not _PROFILE_NAME.fullmatch(file.stem):
            raise ConfigError(key, "file name must be 1-32 of a-z, 0-9 and '-' before .toml")
        try:
            data = tomllib.loads(file.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(key, f"cannot read: {exc}") from None
        return _profile(Table(data, key, Context(base_dir=file.parent)), file.stem)
    except ConfigError as exc:
        raise ConfigError(exc.key, f"{exc.problem} (in {file})") from None


def _profile(t: Table, name: str) -> Profile:
    readers: dict[str, Callable[[Value], Any]] = {
        "name": lambda v: _same_name(v, name),
        "kind": lambda v: v.choice(("phone", "trunk")),
        "caller_id": _caller_id,
        "region": region,
        "auto_answer": lambda v: v.choice(("call-info", "answer-mode", "alert-info", "none")),
        "auto_answer_headers": lambda v: tuple(item.parse(_header_line) for item in v.items()),
        "supports_refer": lambda v: v.boolean(),
        "user_agent_patterns": lambda v: tuple(item.parse(_pattern) for item in v.items()),
        "digest_algorithms": _digest_algorithms,
        "caller_display": display_headers,
        "notes": lambda v: v.text(),
    }
    fields = t.read(readers)
    if "kind" not in fields:
        raise ConfigError(t.key_of("kind"), 'required ("phone" or "trunk")')
    fields.pop("name", None)
    profile = Profile(name=name, **fields)
    _check_auto_answer(t, profile)
    return profile


def _digest_algorithms(v: Value) -> tuple[str, ...]:
    items = v.items()
    if not items:
        raise v.error("must list at least one algorithm")
    names: list[str] = []
    for item in items:
        name = item.text().upper()
        if name not in SUPPORTED_ALGORITHMS:
            raise item.error(
                f"unknown algorithm {show(item.text())}; known: {', '.join(SUPPORTED_ALGORITHMS)}"
            )
        if name in names:
            raise item.error(f"listed twice: {show(item.text())}")
        names.append(name)
    return tuple(names)


def _same_name(v: Value, name: str) -> str:
    if v.text() != name:
        raise v.error(f"must match the file name {show(name)}, got {show(v.text())}")
    return name


def _caller_id(v: Value) -> tuple[str, ...]:
    items = v.items()
    if not items:
        raise v.error("must list at least one header")
    for item in items:
        if not _HEADER_NAME.fullmatch(item.text()):
            raise item.error(f"not a header name: {show(item.text())}")
    return tuple(item.text() for item in items)


def region(v: Value) -> str:
    """An ISO 3166 alpha-2 region that phonenumbers knows (checked when it is there)."""
    code = v.text().upper()
    if not re.fullmatch(r"[A-Z]{2}", code):
        raise v.error(f'must be an ISO 3166 alpha-2 code like "NL", got {show(v.text())}')
    if _REGIONS is not None and code not in _REGIONS:
        raise v.error(f"unknown region {show(code)} (phonenumbers does not support it)")
    return code


def _header_line(text: str) -> str:
    m = _HEADER_LINE.fullmatch(text)
    if m is None:
        raise ValueError(f'expected one header line "Name: value", got {show(text)}')
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise ValueError(f"bad placeholder in {show(text)}: {exc}") from None
    unknown = fields - _PLACEHOLDERS
    if unknown:
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}} (known: {{host}})")
    return text


def _pattern(text: str) -> str:
    """A User-Agent pattern: literal words, not a regular expression (``USER_AGENT_PATTERN``).

    The header is the peer's own text: a profile author's regex could backtrack
    catastrophically on it, a literal search with a word-start anchor cannot.
    """
    if not USER_AGENT_PATTERN.fullmatch(text):
        raise ValueError(
            f"not a User-Agent pattern: {show(text)} (1-64 letters, digits, spaces and "
            "'. _ / + -', starting with a letter or digit, optionally after '^'; regular "
            "expressions are not accepted)"
        )
    return text


def _check_auto_answer(t: Table, profile: Profile) -> None:
    """The headers must carry the method the profile claims, and only if it has one."""
    key = t.key_of("auto_answer_headers")
    if profile.auto_answer == "none":
        if profile.auto_answer_headers:
            raise ConfigError(key, 'must be empty when auto_answer is "none"')
        return
    wanted = _AUTO_ANSWER_HEADER[profile.auto_answer]
    names = [line.partition(":")[0].strip().lower() for line in profile.auto_answer_headers]
    if wanted.lower() not in names:
        raise ConfigError(
            key, f'auto_answer is {show(profile.auto_answer)}: needs a "{wanted}: …" line'
        )
