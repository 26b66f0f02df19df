"""The mapping file of `sipgw sync`: every error names its key; secrets stay out of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cli.sync.mapping import Mapping, load_mapping, read_token
from gateway.config import ConfigError

# A valid mapping that the cases below extend or break, one section at a time.
HEAD = 'tenant = "acme"\nsource = "crm"\nregion = "NL"\n'
GATEWAY = '[gateway]\nurl = "https://gw.example.com:8443"\n'
CSV_INPUT = '[input]\nkind = "csv"\npath = "contacts.csv"\n'
NUMBERS = '[numbers]\ncolumns = ["phone", "mobile"]\n'
FIELDS = '[fields]\nname = "full_name"\ncompany = "company"\ncrm_id = "id"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "crm.toml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Mapping:
    return load_mapping(write(tmp_path, text), env=env or {})


def mapping_text(
    *,
    head: str = HEAD,
    gateway: str = GATEWAY,
    source: str = CSV_INPUT,
    numbers: str = NUMBERS,
    fields: str = FIELDS,
) -> str:
    return "\n".join((head, gateway, source, numbers, fields))


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


# --- a good file --------------------------------------------------------------------------


def test_a_complete_csv_mapping(tmp_path: Path) -> None:
    mapping = load(tmp_path, mapping_text())
    assert (mapping.tenant, mapping.source, mapping.region) == ("acme", "crm", "NL")
    assert mapping.gateway.url == "https://gw.example.com:8443"
    assert (mapping.gateway.host, mapping.gateway.port) == ("gw.example.com", 8443)
    assert mapping.input.kind == "csv"
    assert mapping.input.path == tmp_path / "contacts.csv"  # relative to the mapping file
    assert mapping.input.encoding == "utf-8-sig"  # a byte-order mark is never data
    assert mapping.number_columns == ("phone", "mobile")
    assert mapping.fields == (("name", "full_name"), ("company", "company"), ("crm_id", "id"))
    assert mapping.columns == ("phone", "mobile", "full_name", "company", "id")


def test_a_column_both_number_and_field_is_read_once(tmp_path: Path) -> None:
    mapping = load(tmp_path, mapping_text(fields='[fields]\nname = "n"\nphone = "phone"\n'))
    assert mapping.columns == ("phone", "mobile", "n")
    assert mapping.column_keys()["phone"] == "numbers.columns[0]"


def test_each_source_kind_reads_its_own_keys(tmp_path: Path) -> None:
    sqlite = load(
        tmp_path,
        mapping_text(source='[input]\nkind = "sqlite"\npath = "crm.db"\nquery = "SELECT 1"\n'),
    )
    assert sqlite.input.path == tmp_path / "crm.db" and sqlite.input.query == "SELECT 1"
    jsonl = load(tmp_path, mapping_text(source='[input]\nkind = "jsonl"\npath = "c.jsonl"\n'))
    assert jsonl.input.kind == "jsonl"
    pg = load(
        tmp_path,
        mapping_text(
            source='[input]\nkind = "postgresql"\ndsn = "host=db dbname=crm user=sync"\n'
            'query = "SELECT id FROM contacts"\n'
        ),
    )
    assert pg.input.dsn == "host=db dbname=crm user=sync" and pg.input.path is None


def test_the_dsn_may_come_from_the_environment_password_included(tmp_path: Path) -> None:
    source = '[input]\nkind = "postgresql"\ndsn_env = "CRM_DSN"\nquery = "SELECT 1"\n'
    env = {"CRM_DSN": "host=db user=sync password=s3cret"}
    mapping = load(tmp_path, mapping_text(source=source), env)
    assert mapping.input.dsn == env["CRM_DSN"] and mapping.input.dsn_env == "CRM_DSN"


def test_http_is_accepted_to_a_loopback_host(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:8080", "http://127.9.9.9", "http://[::1]:80", "http://localhost"):
        mapping = load(tmp_path, mapping_text(gateway=f'[gateway]\nurl = "{url}"\n'))
        assert not mapping.gateway.https


# --- errors name the key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (mapping_text(head='tenant = "ACME"\nsource = "crm"\nregion = "NL"\n'), "tenant: must be"),
        (
            mapping_text(head='tenant = "acme"\nsource = "-crm"\nregion = "NL"\n'),
            "source: must be a source id",
        ),
        (
            mapping_text(head='tenant = "acme"\nsource = "crm"\nregion = "XX"\n'),
            'region: "XX" is not a region',
        ),
        (
            mapping_text(head='tenant = "acme"\nsource = "crm"\nregion = "NLD"\n'),
            "region: must be a two-letter country code",
        ),
        (mapping_text(head='tenant = "acme"\nregion = "NL"\n'), "source: required"),
        (mapping_text() + "extra = 1\n", "fields.extra: must be a column name"),
        (mapping_text(gateway=""), "gateway: required"),
        (mapping_text(gateway='[gateway]\nurl = "ftp://gw"\n'), "gateway.url: must be an https"),
        (
            mapping_text(gateway='[gateway]\nurl = "https://u:p@gw"\n'),
            "gateway.url: must not hold credentials",
        ),
        (
            mapping_text(gateway='[gateway]\nurl = "https://gw"\ncafile = "nope.pem"\n'),
            "gateway.cafile: file not found",
        ),
        (mapping_text(gateway='[gateway]\nurl = "https://gw"\ntoken = "x"\n'), "gateway.token: "),
        (mapping_text(source='[input]\nkind = "xml"\n'), "input.kind: must be one of"),
        (mapping_text(source='[input]\nkind = "csv"\n'), "input.path: required"),
        (
            mapping_text(source='[input]\nkind = "csv"\npath = "c.csv"\nquery = "SELECT 1"\n'),
            'input.query: not used by kind "csv" (only by "sqlite", "postgresql")',
        ),
        (
            mapping_text(source='[input]\nkind = "csv"\npath = "c.csv"\ndelimiter = ";;"\n'),
            "input.delimiter: must be one character",
        ),
        (
            mapping_text(source='[input]\nkind = "csv"\npath = "c.csv"\nencoding = "klingon"\n'),
            'input.encoding: unknown encoding "klingon"',
        ),
        (mapping_text(source='[input]\nkind = "sqlite"\npath = "c.db"\n'), "input.query: required"),
        (
            mapping_text(source='[input]\nkind = "sqlite"\npath = "c.db"\nquery = " "\n'),
            "input.query: must be a query",
        ),
        (
            mapping_text(source='[input]\nkind = "postgresql"\nquery = "SELECT 1"\n'),
            "input.dsn: give either dsn or dsn_env",
        ),
        (
            mapping_text(
                source='[input]\nkind = "postgresql"\nquery = "SELECT 1"\ndsn_env = "NOPE"\n'
            ),
            "input.dsn_env: the environment variable NOPE is not set",
        ),
        (mapping_text(numbers=""), "numbers: required"),
        (mapping_text(numbers="[numbers]\ncolumns = []\n"), "numbers.columns: must name at least"),
        (
            mapping_text(numbers='[numbers]\ncolumns = ["phone", 7]\n'),
            "numbers.columns[1]: must be a column name (a string), got 7",
        ),
        (
            mapping_text(numbers='[numbers]\ncolumns = ["phone", "mobile", "phone"]\n'),
            'numbers.columns[2]: column "phone" is listed twice',
        ),
        (
            mapping_text(numbers='[numbers]\ncolumns = ["phone", ""]\n'),
            "numbers.columns[1]: must be a column name, got an empty string",
        ),
        (mapping_text(fields="[fields]\n"), "fields: must export at least one field"),
        (mapping_text(fields="[fields]\nname = 3\n"), "fields.name: must be a column name"),
        (mapping_text(fields='[fields]\n"full name" = "n"\n'), "fields.full name: not a field"),
        (mapping_text() + "[more]\n", "more: unknown key"),
        ("tenant = ", "crm.toml: invalid TOML"),
    ],
)
def test_an_error_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(tmp_path, text)


def test_a_typo_of_a_top_level_key_suggests_the_right_one(tmp_path: Path) -> None:
    text = mapping_text(head='tenant = "acme"\nsorce = "crm"\nregion = "NL"\n')
    assert error_of(tmp_path, text) == 'sorce: unknown key (did you mean "source"?)'


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        load_mapping(tmp_path / "nope.toml")


# --- secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db user=sync password=s3cret",
        "host=db user=sync  PASSWORD = s3cret",
        "password=s3cret host=db",
        "postgresql://sync:s3cret@db/crm",
        "postgres://sync@db/crm?password=s3cret",
        "postgresql://db/crm?sslmode=require&password=s3cret",
    ],
)
def test_a_dsn_with_a_password_is_refused_and_not_echoed(tmp_path: Path, dsn: str) -> None:
    source = f'[input]\nkind = "postgresql"\nquery = "SELECT 1"\ndsn = "{dsn}"\n'
    message = error_of(tmp_path, mapping_text(source=source))
    assert message.startswith("input.dsn: must not hold a password")
    assert "s3cret" not in message


def test_a_dsn_without_a_password_is_accepted(tmp_path: Path) -> None:
    for dsn in ("host=db user=sync passfile=/etc/sipgw/pgpass", "postgresql://sync@db/crm"):
        source = f'[input]\nkind = "postgresql"\nquery = "SELECT 1"\ndsn = "{dsn}"\n'
        assert load(tmp_path, mapping_text(source=source)).input.dsn == dsn


@pytest.mark.parametrize(
    "url",
    ["http://gw.example.com", "http://10.0.0.5:8080", "http://[2001:db8::1]", "http://0.0.0.0"],
)
def test_http_to_a_host_that_is_not_loopback_is_refused(tmp_path: Path, url: str) -> None:
    message = error_of(tmp_path, mapping_text(gateway=f'[gateway]\nurl = "{url}"\n'))
    assert message.startswith("gateway.url: http:// is allowed only to a loopback host")


def test_the_token_comes_from_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "sync.token"
    token_file.write_text("sgw_sync_abc\n")
    os.chmod(token_file, 0o600)
    gateway = '[gateway]\nurl = "https://gw"\ntoken_file = "sync.token"\n'
    mapping = load(tmp_path, mapping_text(gateway=gateway))
    assert mapping.gateway.token_file == token_file
    assert read_token(mapping.gateway, {"SIPGW_SYNC_TOKEN": "other"}) == "sgw_sync_abc"


def test_a_token_file_others_may_read_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "sync.token"
    token_file.write_text("sgw_sync_abc\n")
    os.chmod(token_file, 0o644)
    gateway = '[gateway]\nurl = "https://gw"\ntoken_file = "sync.token"\n'
    mapping = load(tmp_path, mapping_text(gateway=gateway))
    with pytest.raises(ConfigError, match=r"gateway\.token_file: .* may be read by others"):
        read_token(mapping.gateway, {})


def test_the_token_falls_back_to_the_environment(tmp_path: Path) -> None:
    mapping = load(tmp_path, mapping_text())
    assert read_token(mapping.gateway, {"SIPGW_SYNC_TOKEN": " tok \n"}) == "tok"
    with pytest.raises(ConfigError, match="SIPGW_SYNC_TOKEN: not set"):
        read_token(mapping.gateway, {})
