"""The mapping file of ``sipgw sync``: which source, which columns, which gateway.

``load_mapping(path)`` reads the TOML file and returns a checked, frozen ``Mapping``, or
raises ``ConfigError`` naming the key (``numbers.columns[1]: …``) exactly as the gateway's
own settings do. Nothing here touches the source or the network: column names are
checked against the source later, by ``sources``, before anything is sent.

The file is also the customer's statement of what leaves their data: ``[fields]`` is
the complete list of exported fields, so it is strict about names and refuses anything
that would put a secret in it (a database password, a token on the command line).
"""

from __future__ import annotations

import codecs
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping as MappingType
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gateway.config.errors import ConfigError
from gateway.config.reader import Context, Table, Value
from gateway.config.syntax import describe, show
from gateway.recognition.keys import is_source_id

InputKind = Literal["csv", "jsonl", "sqlite", "postgresql"]
INPUT_KINDS: tuple[InputKind, ...] = ("csv", "jsonl", "sqlite", "postgresql")
TOKEN_ENV = "SIPGW_SYNC_TOKEN"

_TOP_LEVEL = ("tenant", "source", "region", "gateway", "input", "numbers", "fields")
# The keys of [input] each kind reads; any other known key is a mistake for that kind.
_INPUT_KEYS: dict[InputKind, tuple[str, ...]] = {
    "csv": ("kind", "path", "delimiter", "encoding"),
    "jsonl": ("kind", "path", "encoding"),
    "sqlite": ("kind", "path", "query"),
    "postgresql": ("kind", "query", "dsn", "dsn_env"),
}
_ALL_INPUT_KEYS = ("kind", "path", "delimiter", "encoding", "query", "dsn", "dsn_env")

_TENANT = re.compile(r"[a-z0-9-]{1,32}")
_REGION = re.compile(r"[A-Z]{2}")
# Exported field names become JSON keys and gateway contact field names: keep them plain.
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A password in a libpq DSN, key/value form (password=…) or URL query (?password=…).
_DSN_PASSWORD = re.compile(r"(?:^|[\s?&])password\s*=", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class GatewayTarget:
    """Where the batches go. ``url`` has no trailing slash; ``base_path`` may be empty."""

    url: str
    https: bool
    host: str
    port: int
    base_path: str
    cafile: Path | None
    token_file: Path | None


@dataclass(frozen=True, slots=True)
class InputSpec:
    kind: InputKind
    path: Path | None  # csv, jsonl, sqlite
    delimiter: str = ","
    encoding: str = "utf-8-sig"  # a byte-order mark is never data
    query: str | None = None  # sqlite, postgresql
    dsn: str | None = None  # postgresql, from the file or from dsn_env (may hold a password)
    dsn_env: str | None = None

    @property
    def label(self) -> str:
        """How problems name the source: the file name, or the database kind."""
        return self.path.name if self.path is not None else self.kind


@dataclass(frozen=True, slots=True)
class Mapping:
    path: Path
    tenant: str
    source: str
    region: str
    gateway: GatewayTarget
    input: InputSpec
    number_columns: tuple[str, ...]
    fields: tuple[tuple[str, str], ...]  # (exported name, source column), in file order

    def column_keys(self) -> dict[str, str]:
        """Source column -> the first mapping key that names it, for error messages."""
        keys: dict[str, str] = {}
        for i, column in enumerate(self.number_columns):
            keys.setdefault(column, f"numbers.columns[{i}]")
        for name, column in self.fields:
            keys.setdefault(column, f"fields.{name}")
        return keys

    @property
    def columns(self) -> tuple[str, ...]:
        """Every source column the mapping reads, each once, numbers first."""
        return tuple(self.column_keys())


def load_mapping(path: str | Path, *, env: MappingType[str, str] | None = None) -> Mapping:
    """Read and check a mapping file. ``env`` (default ``os.environ``) serves ``dsn_env``."""
    file = Path(path).expanduser()
    try:
        text = file.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(str(file), f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(file), f"not UTF-8 text: {exc.reason}") from None
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), f"invalid TOML: {exc}") from None
    root = Table(raw, "", Context(base_dir=file.resolve().parent))
    root.check_keys(_TOP_LEVEL)
    return Mapping(
        path=file,
        tenant=_matching(root.require("tenant"), _TENANT, "a tenant id: 1-32 of a-z, 0-9, -"),
        source=_source_id(root.require("source")),
        region=_region(root.require("region")),
        gateway=_gateway(_required_table(root, "gateway")),
        input=_input(_required_table(root, "input"), os.environ if env is None else env),
        number_columns=_number_columns(_required_table(root, "numbers")),
        fields=_fields(_required_table(root, "fields")),
    )


def read_token(target: GatewayTarget, env: MappingType[str, str] | None = None) -> str:
    """The sync token: ``gateway.token_file`` if set, else ``$SIPGW_SYNC_TOKEN``.

    Never a command-line argument: those show in ``ps`` and in shell history. A token
    file others may read is refused, as ssh refuses an open private key.
    """
    if target.token_file is None:
        token = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
        if not token:
            raise ConfigError(
                TOKEN_ENV, "not set (set it, or gateway.token_file in the mapping file)"
            )
        return token
    key = "gateway.token_file"
    try:
        mode = target.token_file.stat().st_mode
        token = target.token_file.read_text("utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {target.token_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"{target.token_file} is not UTF-8 text") from None
    if mode & 0o007:
        raise ConfigError(key, f"{target.token_file} may be read by others: chmod 600 (or 640) it")
    if not token or any(c.isspace() for c in token):
        raise ConfigError(key, f"{target.token_file} must hold the token alone on one line")
    return token


# --- top level ----------------------------------------------------------------------------


def _required_table(root: Table, name: str) -> Table:
    return root.require(name, f" (a [{name}] table)").table()


def _matching(v: Value, pattern: re.Pattern[str], what: str) -> str:
    text = v.text()
    if pattern.fullmatch(text) is None:
        raise v.error(f"must be {what}, got {show(text)}")
    return text


def _source_id(v: Value) -> str:
    text = v.text()
    if not is_source_id(text):
        raise v.error(f"must be a source id: [a-z0-9][a-z0-9._-]{{0,63}}, got {show(text)}")
    return text


def _region(v: Value) -> str:
    text = v.text().upper()
    if _REGION.fullmatch(text) is None:
        raise v.error(f"must be a two-letter country code (ISO 3166), got {show(v.data)}")
    import phonenumbers  # only here: a slow import that plain mapping errors do not need

    if text not in phonenumbers.SUPPORTED_REGIONS:
        raise v.error(f"{show(text)} is not a region with a telephone numbering plan")
    return text


# --- [gateway] ----------------------------------------------------------------------------


def _gateway(table: Table) -> GatewayTarget:
    table.check_keys(("url", "cafile", "token_file"))
    url_value = table.require("url")
    url = url_value.text().rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise url_value.error(f"not a URL: {exc}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise url_value.error(f"must be an https:// URL, got {show(url)}")
    if parts.username is not None or parts.password is not None:
        raise url_value.error("must not hold credentials (the token goes in gateway.token_file)")
    if parts.query or parts.fragment:
        raise url_value.error("must not have a query or a fragment")
    https = parts.scheme == "https"
    if not https and not _is_loopback(host):
        raise url_value.error(
            "http:// is allowed only to a loopback host (127.0.0.0/8, ::1, localhost): "
            "the token and the contacts must not cross a network in clear text"
        )
    cafile_value = table.get("cafile")
    cafile = None if cafile_value is None else _existing_file(cafile_value)
    if cafile is not None and not https:
        raise ConfigError(table.key_of("cafile"), "only used with an https:// URL")
    token_value = table.get("token_file")
    return GatewayTarget(
        url=url,
        https=https,
        host=host,
        port=port if port is not None else (443 if https else 80),
        base_path=parts.path.rstrip("/"),
        cafile=cafile,
        token_file=None if token_value is None else token_value.path(),
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _existing_file(v: Value) -> Path:
    path = v.path()
    if not path.is_file():
        raise v.error(f"file not found: {path}")
    return path


# --- [input] ------------------------------------------------------------------------------


def _input(table: Table, env: MappingType[str, str]) -> InputSpec:
    table.check_keys(_ALL_INPUT_KEYS)
    kind: InputKind = table.require("kind").choice(INPUT_KINDS)  # type: ignore[assignment]
    for name in table.data:
        if name not in _INPUT_KEYS[kind]:
            users = [k for k, keys in _INPUT_KEYS.items() if name in keys]
            raise ConfigError(
                table.key_of(name),
                f"not used by kind {show(kind)} (only by {', '.join(show(k) for k in users)})",
            )
    if kind in ("csv", "jsonl"):
        return InputSpec(
            kind=kind,
            path=table.require("path").path(),
            delimiter=_delimiter(table.get("delimiter")),
            encoding=_encoding(table.get("encoding")),
        )
    query = _query(table.require("query"))
    if kind == "sqlite":
        return InputSpec(kind=kind, path=table.require("path").path(), query=query)
    dsn, dsn_env = _dsn(table, env)
    return InputSpec(kind=kind, path=None, query=query, dsn=dsn, dsn_env=dsn_env)


def _delimiter(v: Value | None) -> str:
    if v is None:
        return ","
    text = v.text()
    if len(text) != 1 or text in ('"', "\r", "\n"):
        raise v.error(f"must be one character other than a quote or a newline, got {show(text)}")
    return text


def _encoding(v: Value | None) -> str:
    if v is None:
        return "utf-8-sig"
    text = v.text()
    try:
        name = codecs.lookup(text).name
    except LookupError:
        raise v.error(f"unknown encoding {show(text)}") from None
    # "utf-8" reads a file that starts with a byte-order mark too (Excel writes one).
    return "utf-8-sig" if name == "utf-8" else name


def _query(v: Value) -> str:
    text = v.text()
    if not text.strip():
        raise v.error("must be a query, got an empty string")
    return text


def _dsn(table: Table, env: MappingType[str, str]) -> tuple[str, str | None]:
    """The DSN: written in the file (without a password) or read from a variable."""
    dsn_value, env_value = table.get("dsn"), table.get("dsn_env")
    if (dsn_value is None) == (env_value is None):
        raise ConfigError(
            table.key_of("dsn"), "give either dsn or dsn_env (a variable holding the DSN)"
        )
    if dsn_value is not None:
        dsn = dsn_value.text(secret=True)
        if _dsn_has_password(dsn):
            raise dsn_value.error(
                "must not hold a password (use dsn_env, PGPASSWORD or ~/.pgpass): "
                "the mapping file is not a place for secrets"
            )
        return dsn, None
    assert env_value is not None
    name = env_value.text()
    if _ENV_NAME.fullmatch(name) is None:
        raise env_value.error(f"must be an environment variable name, got {show(name)}")
    dsn = env.get(name, "")
    if not dsn.strip():
        raise env_value.error(f"the environment variable {name} is not set")
    return dsn, name


def _dsn_has_password(dsn: str) -> bool:
    if _DSN_PASSWORD.search(dsn):
        return True
    if "://" not in dsn:
        return False
    try:
        return urlsplit(dsn).password is not None
    except ValueError:
        return True  # unparsable: do not guess, refuse


# --- [numbers] and [fields] ---------------------------------------------------------------


def _number_columns(table: Table) -> tuple[str, ...]:
    table.check_keys(("columns",))
    value = table.require("columns", ' (e.g. columns = ["phone", "mobile"])')
    items = value.items(allow_single=True)
    if not items:
        raise value.error("must name at least one column")
    columns: list[str] = []
    for item in items:
        column = _column(item)
        if column in columns:
            raise item.error(f"column {show(column)} is listed twice")
        columns.append(column)
    return tuple(columns)


def _fields(table: Table) -> tuple[tuple[str, str], ...]:
    if not table.data:
        raise ConfigError(
            table.key or "fields", 'must export at least one field (e.g. name = "full_name")'
        )
    fields: list[tuple[str, str]] = []
    for name in table.data:
        value = table.get(name)
        assert value is not None
        if _FIELD_NAME.fullmatch(name) is None:
            raise value.error("not a field name: a letter or _, then up to 63 of A-Z a-z 0-9 _")
        fields.append((name, _column(value)))
    return tuple(fields)


def _column(v: Value) -> str:
    if not isinstance(v.data, str):
        raise v.error(f"must be a column name (a string), got {describe(v.data)}")
    if not v.data.strip():
        raise v.error("must be a column name, got an empty string")
    return v.data
