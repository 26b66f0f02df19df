"""gateway.config: loading, environment overrides, validation messages, secrecy, profiles."""

from __future__ import annotations

import datetime
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path

import argon2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import (
    DEFAULT_PROFILES_DIR,
    ConfigError,
    ListenSpec,
    Settings,
    Tenant,
    User,
    load_settings,
    parse_env_value,
)
from gateway.sip.digest import compute_ha1

REPO = Path(__file__).resolve().parents[2]

# A minimal valid tenant that error cases extend or break.
TENANT = """
[[tenants]]
id = "acme"
name = "ACME"
domains = ["acme.example"]

[[tenants.users]]
username = "alice"
extension = "201"
password = "Alice-pass-1"
"""


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    file = tmp_path / "sipgw.toml"
    file.write_text(text)
    return load_settings(file, env=env or {})


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


# --- the shipped files ----------------------------------------------------------------


def test_embedded_default_loads() -> None:
    settings = load_settings(env={})

    assert settings.source == "<embedded gateway/default.toml>"
    assert settings.node.name == "demo"
    assert [str(s) for s in settings.sip.listen] == [
        "udp:127.0.0.1:5060",
        "tcp:127.0.0.1:5060",
        "tls:127.0.0.1:5061",
    ]
    assert settings.http.listen == "127.0.0.1:8080"
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
    assert settings.default_tenant == "demo"
    demo = settings.tenants[0]
    assert demo.id == "demo"
    assert demo.domains == ("demo.sipgw.test", "127.0.0.1", "localhost")
    assert demo.region == "NL"
    assert demo.realm == "demo.sipgw.test"
    assert [u.extension for u in demo.users] == ["201", "202", "203"]
    assert demo.extension_for_did("+31201234567") == "201"
    pstn = demo.trunk_by_name("pstn")
    assert pstn is not None
    assert (pstn.host, pstn.port, pstn.transport) == ("127.0.0.1", 5080, "udp")
    assert pstn.match == ("127.0.0.1:5080",)
    assert pstn.matches("127.0.0.1", 5080)
    assert not pstn.matches("127.0.0.1", 5060)


def test_embedded_default_demo_passwords_are_strong_and_resolve() -> None:
    raw = tomllib.loads((REPO / "gateway" / "default.toml").read_text())
    settings = load_settings(env={})
    demo = settings.tenants[0]
    for user_raw in raw["tenants"][0]["users"]:
        password = user_raw["password"]
        assert len(password) >= 12
        assert any(c.isupper() for c in password) and any(c.islower() for c in password)
        assert any(c.isdigit() for c in password) and any(not c.isalnum() for c in password)
        user = demo.user_by_username(user_raw["username"])
        assert user is not None
        assert user.ha1_sha256 == compute_ha1(user.username, demo.realm, password, "SHA-256")
    assert settings.tenant_by_domain("127.0.0.1") is demo
    assert settings.tenant_by_domain("192.0.2.1") is None
    assert settings.tenant_for_domain("192.0.2.1") is demo  # the default tenant


EXAMPLE_OWN_PASSWORDS = {  # the example's public passwords replaced (gateway/config/exposure.py)
    "SIPGW_TENANTS__0__USERS__0__PASSWORD": "Own-pass-201!",
    "SIPGW_TENANTS__0__USERS__1__PASSWORD": "Own-pass-202!",
    "SIPGW_TENANTS__1__USERS__0__PASSWORD": "Own-pass-1001!",
}


def test_full_example_loads() -> None:
    settings = load_settings(REPO / "examples" / "sipgw.toml", env=EXAMPLE_OWN_PASSWORDS)

    assert settings.sip.advertise == "sip.gw.example.net"
    assert str(settings.sip.listen[3]) == "udp:[::]:5060"
    assert [t.id for t in settings.tenants] == ["acme", "globex"]
    acme = settings.tenant_by_id("acme")
    assert acme is not None
    assert settings.tenant_by_domain("ACME.example.") is acme
    carol = acme.user_by_extension("203")
    assert carol is not None and carol.profile == "pjsua"
    backup = acme.trunk_by_name("carrier-backup")
    assert backup is not None and backup.port == 5061  # the TLS default port
    carrier = acme.trunk_by_name("carrier")
    assert carrier is not None
    assert carrier.matches("198.51.100.7", 40000)
    assert not carrier.matches("198.51.100.16", 5060)
    assert settings.tenant_for_domain("pbx.globex.example") is settings.tenant_by_id("globex")


def test_sipgw_config_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "from-env.toml"
    file.write_text('[node]\nname = "from-env"\n')
    assert load_settings(env={"SIPGW_CONFIG": str(file)}).node.name == "from-env"
    # An explicit path wins over SIPGW_CONFIG.
    assert (
        load_settings(REPO / "gateway" / "default.toml", env={"SIPGW_CONFIG": "x"}).node.name
        == "demo"
    )


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"SIPGW_CONFIG": str(missing)})
    assert str(info.value) == f"SIPGW_CONFIG ({missing}): cannot read: No such file or directory"

    file = tmp_path / "sipgw.toml"
    file.write_text("[sip\n")
    with pytest.raises(ConfigError) as info:
        load_settings(file, env={})
    assert str(info.value) == (
        f"{file}: invalid TOML: Expected ']' at the end of a table declaration "
        "(at line 1, column 5)"
    )


def test_defaults_when_the_file_is_empty(tmp_path: Path) -> None:
    settings = load(tmp_path, "")

    assert settings.node.name == socket.gethostname()
    sip = settings.sip
    assert (sip.t1, sip.t2, sip.t4) == (0.5, 4.0, 5.0)
    assert (sip.max_message_size, sip.max_headers, sip.max_header_line) == (65535, 128, 8192)
    assert (sip.max_connections, sip.idle_timeout, sip.max_forwards) == (4096, 300.0, 70)
    assert sip.tls_min_version == "1.2" and "CBC" not in sip.tls_ciphers
    assert (sip.registrar_min_expires, sip.registrar_max_expires) == (60, 3600)
    assert (sip.registrar_default_expires, sip.max_contacts_per_aor) == (3600, 10)
    assert (sip.nonce_ttl, sip.fork_timeout, sip.auth_secret) == (300.0, 180.0, None)
    assert sip.user_agent == "sipgw/0.1"
    assert sip.advertised_host(sip.listen[0]) == "127.0.0.1"
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert (settings.log.level, settings.log.format) == ("INFO", "json")
    assert settings.tenants == () and settings.default_tenant is None
    assert settings.profiles_dir == DEFAULT_PROFILES_DIR


# --- environment overrides ------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "text", "get", "expected"),
    [
        ("SIPGW_SIP__T1", "0.6", lambda s: s.sip.t1, 0.6),  # float
        ("SIPGW_SIP__T2", "8", lambda s: s.sip.t2, 8.0),  # int where a float is wanted
        ("SIPGW_SIP__MAX_FORWARDS", "20", lambda s: s.sip.max_forwards, 20),  # int
        ("SIPGW_LOG__FORMAT", '"text"', lambda s: s.log.format, "text"),  # quoted string
        ("SIPGW_LOG__LEVEL", "debug", lambda s: s.log.level, "DEBUG"),  # raw string
        ("SIPGW_HTTP__LISTEN", "127.0.0.1:9000", lambda s: s.http.listen, "127.0.0.1:9000"),
        ("SIPGW_REDIS__URL", "redis://r:6380/2", lambda s: s.redis.url, "redis://r:6380/2"),
        ("SIPGW_NODE__NAME", "123", lambda s: s.node.name, "123"),  # TOML int, string key
        ("SIPGW_SIP__TLS_MIN_VERSION", "1.3", lambda s: s.sip.tls_min_version, "1.3"),
        ("SIPGW_SIP__ADVERTISE", "[2001:DB8::1]", lambda s: s.sip.advertise, "[2001:db8::1]"),
        (
            "SIPGW_SIP__LISTEN",
            '["udp:127.0.0.1:5070", "tcp:[::1]:5070"]',  # array
            lambda s: [str(x) for x in s.sip.listen],
            ["udp:127.0.0.1:5070", "tcp:[::1]:5070"],
        ),
        (
            "SIPGW_SIP__LISTEN",
            "udp:127.0.0.1:5070",  # a lone string is a one-element array
            lambda s: [str(x) for x in s.sip.listen],
            ["udp:127.0.0.1:5070"],
        ),
        (
            "SIPGW_TENANTS__0__TRUNKS__0__OUTBOUND",
            "false",
            lambda s: s.tenants[0].trunks[0].outbound,
            False,
        ),
        ("SIPGW_TENANTS__0__NAME", "Demo B.V.", lambda s: s.tenants[0].name, "Demo B.V."),
        ("SIPGW_DEFAULT_TENANT", "", lambda s: s.default_tenant, None),  # empty: removed
        ("SIPGW_NODE__NAME", "", lambda s: s.node.name, socket.gethostname()),
    ],
)
def test_env_overrides(
    var: str, text: str, get: Callable[[Settings], object], expected: object
) -> None:
    assert get(load_settings(env={var: text})) == expected


def test_env_override_of_a_password_recomputes_the_ha1() -> None:
    settings = load_settings(env={"SIPGW_TENANTS__0__USERS__1__PASSWORD": "New-pass-202"})
    user = settings.tenants[0].users[1]
    assert user.ha1_md5 == compute_ha1("202", "demo.sipgw.test", "New-pass-202", "MD5")


def test_env_creates_missing_tables_and_ignores_other_variables(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        "",
        env={"SIPGW_REDIS__URL": "rediss://cache:6380/1", "PATH": "/bin", "SIPGWX": "1"},
    )
    assert settings.redis.url == "rediss://cache:6380/1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.6", 0.6),
        ("42", 42),
        ("true", True),
        ('"quoted"', "quoted"),
        ("[1, 2]", [1, 2]),
        ("127.0.0.1:9000", "127.0.0.1:9000"),  # not TOML: the text itself
        ("redis://x", "redis://x"),
        ("2024-01-01", "2024-01-01"),  # a TOML date is no setting's type
        ("1\nx = 2", "1\nx = 2"),  # no smuggling of extra keys
    ],
)
def test_parse_env_value(text: str, expected: object) -> None:
    assert parse_env_value(text) == expected


# --- error messages: key and problem, exactly -----------------------------------------

# The shipped phone profiles, as an error lists them.
PHONE_PROFILES = (
    "baresip, basic-md5, cisco-spa, generic-phone, grandstream, legacy-md5, linphone, "
    "md5-first-phone, microsip, no-refer-phone, pjsua, polycom, sipp, snom, yealink, zoiper"
)
TENANT_HEAD = '[[tenants]]\nid = "acme"\nname = "ACME"\ndomains = ["acme.example"]\n'

ERRORS = [
    ("[sip]\nt11 = 1\n", {}, 'sip.t11: unknown key (did you mean "t1"?)'),
    ("tenant = 1\n", {}, 'tenant: unknown key (did you mean "tenants"?)'),
    (
        "[log]\ncolour = true\n",
        {},
        "log.colour: unknown key (known: level, format)",
    ),
    ("[sip]\nt1 = -1\n", {}, "sip.t1: must be a positive number, got -1"),
    ('[sip]\nt1 = "fast"\n', {}, 'sip.t1: must be a positive number, got "fast"'),
    ("[sip]\nt1 = 5\n", {}, "sip.t1: must not exceed sip.t2 (4.0), got 5.0"),
    ("[sip]\nt2 = 0.1\n", {}, "sip.t2: must be at least sip.t1 (0.5), got 0.1"),
    (
        "[sip]\nmax_forwards = 300\n",
        {},
        "sip.max_forwards: must be an integer from 1 to 255, got 300",
    ),
    ("[sip]\nmax_headers = 0\n", {}, "sip.max_headers: must be a positive integer, got 0"),
    ("[sip]\nmax_headers = true\n", {}, "sip.max_headers: must be a positive integer, got true"),
    (
        "[sip]\nregistrar_default_expires = 30\n",
        {},
        "sip.registrar_default_expires: must be at least sip.registrar_min_expires (60), got 30",
    ),
    (
        '[sip]\nlisten = ["udp:127.0.0.1:5060", "udp:foo"]\n',
        {},
        'sip.listen[1]: expected "transport:host:port", got "udp:foo"',
    ),
    (
        '[sip]\nlisten = ["sctp:127.0.0.1:5060"]\n',
        {},
        'sip.listen[0]: transport must be one of udp, tcp, tls, got "sctp"',
    ),
    (
        '[sip]\nlisten = ["udp:127.0.0.1:70000"]\n',
        {},
        'sip.listen[0]: port must be 0-65535, got "70000"',
    ),
    (
        '[sip]\nlisten = ["tcp:::1:5060"]\n',
        {},
        'sip.listen[0]: IPv6 address must be in brackets (like tcp:[::1]:5060): "tcp:::1:5060"',
    ),
    (
        '[sip]\nlisten = ["udp:127.0.0.1:5060", "UDP:127.0.0.1:5060"]\n',
        {},
        'sip.listen[1]: duplicate of sip.listen[0] ("udp:127.0.0.1:5060")',
    ),
    ("[sip]\nlisten = []\n", {}, "sip.listen: must list at least one address"),
    (
        '[sip]\nlisten = ["udp:0.0.0.0:5060"]\n',
        {},
        'sip.advertise: required when sip.listen[0] ("udp:0.0.0.0:5060") binds every '
        "interface: give the address peers should send to",
    ),
    (
        '[sip]\nadvertise = "1.2.3.4:5060"\n',
        {},
        'sip.advertise: not a host name or IP address: "1.2.3.4:5060"',
    ),
    (
        "[sip]\ntls_min_version = 1.3\n",
        {},
        'sip.tls_min_version: must be a string, one of "1.2", "1.3", got 1.3',
    ),
    (
        '[sip]\ntls_ciphers = "NOPE"\n',
        {},
        'sip.tls_ciphers: OpenSSL selects no cipher from "NOPE"',
    ),
    (
        '[sip]\nauth_secret = "short"\n',
        {},
        "sip.auth_secret: must be at least 16 characters (it signs every nonce)",
    ),
    (
        '[sip]\nuser_agent = "a\\r\\nX: y"\n',
        {},
        'sip.user_agent: must be non-empty text without control characters, got "a\r\nX: y"',
    ),
    (
        '[http]\nlisten = "8080"\n',
        {},
        'http.listen: expected "host:port" (IPv6 in brackets), got "8080"',
    ),
    (
        '[redis]\nurl = "http://:hunter2@x"\n',
        {},
        "redis.url: must be a redis://host[:port][/db], rediss://… or unix://path URL, "
        'got "http://:***@x"',
    ),
    (
        '[log]\nlevel = "LOUD"\n',
        {},
        'log.level: must be one of "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", got "LOUD"',
    ),
    (
        '[node]\nname = "a b"\n',
        {},
        "node.name: must be 1-64 letters, digits, '.', '_' or '-', got \"a b\"",
    ),
    ("sip = 5\n", {}, "sip: must be a table, got 5"),
    ("tenants = 5\n", {}, "tenants: must be an array of tables ([[tenants]]), got 5"),
    # environment overrides name the variable too
    ("", {"SIPGW_SIP__T1": "-1"}, "SIPGW_SIP__T1 (sip.t1): must be a positive number, got -1"),
    ("", {"SIPGW_SIP__T11": "1"}, 'SIPGW_SIP__T11 (sip.t11): unknown key (did you mean "t1"?)'),
    (
        "",
        {"SIPGW_SIP__LISTEN": '["udp:foo"]'},
        'SIPGW_SIP__LISTEN (sip.listen[0]): expected "transport:host:port", got "udp:foo"',
    ),
    (
        "[sip]\nt1 = 0.5\n",
        {"SIPGW_SIP__T1__X": "1"},
        "SIPGW_SIP__T1__X (sip.t1): is a value, not a table",
    ),
    (
        "",
        {"SIPGW_SIP__T1__X": "1"},
        "SIPGW_SIP__T1__X (sip.t1): must be a positive number, got a table",
    ),
    (
        "",
        {"SIPGW_TENANTS__0__NAME": "x"},
        "SIPGW_TENANTS__0__NAME (tenants): no such array element (the array is not set)",
    ),
    (
        "",
        {"SIPGW_SIP____T1": "1"},
        "SIPGW_SIP____T1: empty name segment (nesting is written with __)",
    ),
    (
        "",
        {"SIPGW_PROFILES_DIR": "/nonexistent-profiles"},
        "SIPGW_PROFILES_DIR (profiles_dir): not a directory: /nonexistent-profiles",
    ),
    # tenants
    (
        TENANT.replace('id = "acme"', 'id = "ACME"'),
        {},
        "tenants[0].id: must be 1-32 of a-z, 0-9 and '-', got \"ACME\"",
    ),
    (TENANT.replace('name = "ACME"\n', ""), {}, "tenants[0].name: required"),
    (
        TENANT.replace('["acme.example"]', "[]"),
        {},
        "tenants[0].domains: must list at least one SIP domain",
    ),
    (
        TENANT.replace('["acme.example"]', '["acme.example", "ACME.example"]'),
        {},
        'tenants[0].domains[1]: duplicate of tenants[0].domains[0] ("acme.example")',
    ),
    (
        TENANT + '[[tenants]]\nid = "other"\nname = "O"\ndomains = ["Acme.Example"]\n',
        {},
        'tenants[1].domains[0]: duplicate of tenants[0].domains[0] ("acme.example")',
    ),
    (
        TENANT + '[[tenants]]\nid = "acme"\nname = "O"\ndomains = ["o.example"]\n',
        {},
        'tenants[1].id: duplicate of tenants[0].id ("acme")',
    ),
    (
        TENANT + 'region = "XX"\n',
        {},
        "tenants[0].users[0].region: unknown key (known: username, extension, display_name, "
        "password, ha1_md5, ha1_sha256, profile, api_password, api_password_hash, role, "
        "extensions)",
    ),
    (
        TENANT.replace('domains = ["acme.example"]', 'domains = ["acme.example"]\nregion = "XX"'),
        {},
        'tenants[0].region: unknown region "XX" (phonenumbers does not support it)',
    ),
    (
        TENANT.replace('domains = ["acme.example"]', 'domains = ["acme.example"]\nregion = "NLD"'),
        {},
        'tenants[0].region: must be an ISO 3166 alpha-2 code like "NL", got "NLD"',
    ),
    (
        TENANT.replace('domains = ["acme.example"]', 'domains = ["acme.example"]\nrealm = "a\\"b"'),
        {},
        "tenants[0].realm: must not contain quotes or backslashes (it is quoted in challenges)",
    ),
    (
        'default_tenant = "nope"\n' + TENANT,
        {},
        'default_tenant: unknown tenant "nope" (tenants: acme)',
    ),
    # users
    (
        TENANT.replace('password = "Alice-pass-1"', ""),
        {},
        "tenants[0].users[0].password: required (or ha1_md5 and ha1_sha256)",
    ),
    (
        TENANT + f'ha1_md5 = "{"0" * 32}"\n',
        {},
        "tenants[0].users[0].password: give either password or ha1_md5 and ha1_sha256, not both",
    ),
    (
        TENANT.replace('password = "Alice-pass-1"', f'ha1_md5 = "{"0" * 32}"'),
        {},
        "tenants[0].users[0].ha1_sha256: required with ha1_md5 (both are offered)",
    ),
    (
        TENANT.replace('password = "Alice-pass-1"', f'ha1_sha256 = "{"0" * 64}"'),
        {},
        "tenants[0].users[0].ha1_md5: required with ha1_sha256 (both are offered)",
    ),
    (
        TENANT.replace(
            'password = "Alice-pass-1"', f'ha1_md5 = "{"0" * 31}"\nha1_sha256 = "{"0" * 64}"'
        ),
        {},
        'tenants[0].users[0].ha1_md5: must be 32 hex digits (MD5 of "username:realm:password")',
    ),
    (
        TENANT.replace('password = "Alice-pass-1"', 'password = "alllowercase1!"'),
        {},
        "tenants[0].users[0].password: too weak: use at least 8 characters with upper case, "
        "lower case, digit and special character",
    ),
    (
        TENANT.replace('password = "Alice-pass-1"', "password = 12345678"),
        {},
        "tenants[0].users[0].password: must be a string",
    ),
    (
        TENANT.replace('extension = "201"', "extension = 201"),
        {},
        'tenants[0].users[0].extension: must be a string of 2-8 digits (quote it: "201"), got 201',
    ),
    (
        TENANT.replace('extension = "201"', 'extension = "2"'),
        {},
        'tenants[0].users[0].extension: must be 2-8 digits, got "2"',
    ),
    (
        TENANT.replace('username = "alice"', 'username = "al ice"'),
        {},
        "tenants[0].users[0].username: must be 1-64 letters, digits, '.', '_' or '-', "
        'got "al ice"',
    ),
    (
        TENANT
        + '[[tenants.users]]\nusername = "alice"\nextension = "202"\npassword = "Alice-pass-2"\n',
        {},
        'tenants[0].users[1].username: duplicate of tenants[0].users[0].username ("alice")',
    ),
    (
        TENANT
        + '[[tenants.users]]\nusername = "bob"\nextension = "201"\npassword = "Bobby-pass-2"\n',
        {},
        'tenants[0].users[1].extension: duplicate of tenants[0].users[0].extension ("201")',
    ),
    (
        TENANT + 'profile = "nokia"\n',
        {},
        'tenants[0].users[0].profile: unknown profile "nokia" '
        f"(known phone profiles: {PHONE_PROFILES})",
    ),
    (
        TENANT + 'profile = "generic-trunk"\n',
        {},
        'tenants[0].users[0].profile: "generic-trunk" is a trunk profile, a phone profile is '
        f"needed (known phone profiles: {PHONE_PROFILES})",
    ),
    (
        TENANT_HEAD + 'default_phone_profile = "generic-trunk"\n',
        {},
        'tenants[0].default_phone_profile: "generic-trunk" is a trunk profile, a phone '
        f"profile is needed (known phone profiles: {PHONE_PROFILES})",
    ),
    (
        TENANT_HEAD + 'default_phone_profile = "nokia"\n',
        {},
        'tenants[0].default_phone_profile: unknown profile "nokia" '
        f"(known phone profiles: {PHONE_PROFILES})",
    ),
    (
        '[[tenants]]\nid = "a"\nname = "A"\ndomains = ["a.example"]\n'
        '[tenants.users]\nusername = "x"\npassword = "Secret-Pass-1"\n',
        {},
        "tenants[0].users: must be an array of tables ([[tenants.users]]), got a table",
    ),
    # dids
    (
        TENANT + '[[tenants.dids]]\nnumber = "+31201234567"\nextension = "299"\n',
        {},
        'tenants[0].dids[0].extension: no user of tenant "acme" has extension "299" '
        "(extensions: 201)",
    ),
    (
        TENANT + '[[tenants.dids]]\nnumber = "0201234567"\nextension = "201"\n',
        {},
        'tenants[0].dids[0].number: must be E.164: "+" and 6-15 digits, got "0201234567"',
    ),
    (
        TENANT + '[[tenants.dids]]\nnumber = 31201234567\nextension = "201"\n',
        {},
        'tenants[0].dids[0].number: must be a string in E.164 form like "+31201234567", '
        "got 31201234567",
    ),
    (
        TENANT
        + '[[tenants.dids]]\nnumber = "+31201234567"\nextension = "201"\n'
        + '[[tenants.dids]]\nnumber = "+31201234567"\nextension = "201"\n',
        {},
        'tenants[0].dids[1].number: duplicate of tenants[0].dids[0].number ("+31201234567")',
    ),
    # trunks
    (
        TENANT + '[[tenants.trunks]]\nname = "p"\nhost = "10.0.0.1"\nmatch = ["10.0.0.1/24"]\n',
        {},
        'tenants[0].trunks[0].match[0]: invalid CIDR "10.0.0.1/24": host bits set '
        '(did you mean "10.0.0.0/24"?)',
    ),
    (
        TENANT + '[[tenants.trunks]]\nname = "p"\nhost = "10.0.0.1"\nmatch = ["10.0.0.0/33"]\n',
        {},
        'tenants[0].trunks[0].match[0]: invalid CIDR "10.0.0.0/33": '
        "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network",
    ),
    (
        TENANT + '[[tenants.trunks]]\nname = "p"\nhost = "10.0.0.1"\nmatch = ["carrier.example"]\n',
        {},
        'tenants[0].trunks[0].match[0]: must be an IP address, not a host name: "carrier.example"',
    ),
    (
        TENANT + '[[tenants.trunks]]\nname = "p"\nhost = "sip.carrier.example"\n',
        {},
        'tenants[0].trunks[0].match: required when host is a name ("sip.carrier.example"): '
        "list the addresses the trunk sends from (trust is given to addresses, not names)",
    ),
    (
        TENANT
        + '[[tenants.trunks]]\nname = "p"\nhost = "10.0.0.1"\n'
        + '[[tenants.trunks]]\nname = "q"\nhost = "10.0.0.2"\nmatch = ["10.0.0.0/24"]\n',
        {},
        'tenants[0].trunks[1].match[0]: "10.0.0.0/24" overlaps tenants[0].trunks[0].match '
        '("10.0.0.1:5060"): a source address must identify one trunk',
    ),
    (
        TENANT
        + '[[tenants.trunks]]\nname = "p"\nhost = "10.0.0.1"\n'
        + '[[tenants.trunks]]\nname = "p"\nhost = "10.0.0.2"\n',
        {},
        'tenants[0].trunks[1].name: duplicate of tenants[0].trunks[0].name ("p")',
    ),
    (
        TENANT + '[[tenants.trunks]]\nname = "p"\nhost = "10.0.0.1"\nprofile = "linphone"\n',
        {},
        'tenants[0].trunks[0].profile: "linphone" is a phone profile, a trunk profile is '
        "needed (known trunk profiles: generic-trunk)",
    ),
    (
        TENANT + '[[tenants.trunks]]\nname = "p"\nhost = "10.0.0.1"\ntransport = "sctp"\n',
        {},
        'tenants[0].trunks[0].transport: must be one of "udp", "tcp", "tls", got "sctp"',
    ),
    (
        TENANT + '[[tenants.trunks]]\nname = "p"\nhost = "10.0.0.1"\noptions_interval = -1\n',
        {},
        "tenants[0].trunks[0].options_interval: must be a non-negative number, got -1",
    ),
    (
        TENANT + '[[tenants.trunks]]\nname = "p"\nhost = "10.0.0.1"\nport = 0\n',
        {},
        "tenants[0].trunks[0].port: must be an integer from 1 to 65535, got 0",
    ),
    # API logins of users
    (
        TENANT + 'api_password = "weakpassword"\n',
        {},
        "tenants[0].users[0].api_password: too weak: use at least 8 characters with upper "
        "case, lower case, digit and one of #?!@$%^&*-~",
    ),
    (
        TENANT + 'api_password = "Abcdefg1_"\n',  # "_" is not one of the specials
        {},
        "tenants[0].users[0].api_password: too weak: use at least 8 characters with upper "
        "case, lower case, digit and one of #?!@$%^&*-~",
    ),
    (
        TENANT + 'api_password = "Alice-pass-1"\n',
        {},
        "tenants[0].users[0].api_password: must differ from the SIP password",
    ),
    (
        TENANT + 'api_password = "Alice-api-1!"\napi_password_hash = "x"\n',
        {},
        "tenants[0].users[0].api_password: give either api_password or api_password_hash, not both",
    ),
    (
        TENANT + 'api_password_hash = "$2b$12$abcdefghijklmnopqrstuv"\n',
        {},
        'tenants[0].users[0].api_password_hash: must be an Argon2id hash ("$argon2id$v=19$m=…,'
        't=…,p=…$salt$hash"); make one with `sipgw password-hash`',
    ),
    (
        TENANT + "api_password = 12345678\n",
        {},
        "tenants[0].users[0].api_password: must be a string",
    ),
    (
        TENANT + 'role = "root"\n',
        {},
        'tenants[0].users[0].role: must be one of "admin", "user", got "root"',
    ),
    (
        TENANT + 'extensions = ["299"]\n',
        {},
        'tenants[0].users[0].extensions[0]: no user of this tenant has extension "299" '
        "(extensions: 201)",
    ),
    (
        TENANT
        + 'extensions = ["202", "202"]\n'
        + '[[tenants.users]]\nusername = "bob"\nextension = "202"\npassword = "Bobby-pass-2"\n',
        {},
        'tenants[0].users[0].extensions[1]: duplicate of tenants[0].users[0].extensions[0] ("202")',
    ),
    (
        TENANT + "extensions = [202]\n",
        {},
        'tenants[0].users[0].extensions[0]: must be a string of 2-8 digits (quote it: "202"), '
        "got 202",
    ),
    (
        TENANT + 'role = "admin"\nextensions = ["201"]\n',
        {},
        'tenants[0].users[0].extensions: not used with role "admin" (an admin sees every '
        "extension)",
    ),
    (
        TENANT,
        {"SIPGW_TENANTS__0__USERS__0__API_PASSWORD": "short"},
        "SIPGW_TENANTS__0__USERS__0__API_PASSWORD (tenants[0].users[0].api_password): too weak: "
        "use at least 8 characters with upper case, lower case, digit and one of #?!@$%^&*-~",
    ),
    # [events]
    (
        "[events]\nstream_maxlen = 0\n",
        {},
        "events.stream_maxlen: must be a positive integer, got 0",
    ),
    (
        "[events]\nstream_max_age = -1\n",
        {},
        "events.stream_max_age: must be a non-negative number, got -1",
    ),
    ("[events]\nmax_queue = 1.5\n", {}, "events.max_queue: must be a positive integer, got 1.5"),
    ("[events]\nmax_buffer = 0\n", {}, "events.max_buffer: must be a positive integer, got 0"),
    (
        '[events]\nsubscriber_queue = "big"\n',
        {},
        'events.subscriber_queue: must be a positive integer, got "big"',
    ),
    (
        "[events]\nmax_subscribers_per_tenant = -5\n",
        {},
        "events.max_subscribers_per_tenant: must be a positive integer, got -5",
    ),
    ("[events]\nheartbeat = 0\n", {}, "events.heartbeat: must be a positive number, got 0"),
    (
        "[events]\nheartbeats = 1\n",
        {},
        'events.heartbeats: unknown key (did you mean "heartbeat"?)',
    ),
    (
        "",
        {"SIPGW_EVENTS__STREAM_MAXLEN": "-1"},
        "SIPGW_EVENTS__STREAM_MAXLEN (events.stream_maxlen): must be a positive integer, got -1",
    ),
    # [security]
    ("[security]\ntoken_ttl = 0\n", {}, "security.token_ttl: must be a positive number, got 0"),
    (
        "[security]\nlogin_max_failures = 0\n",
        {},
        "security.login_max_failures: must be a positive integer, got 0",
    ),
    (
        "[security]\nlogin_max_failures_per_source = true\n",
        {},
        "security.login_max_failures_per_source: must be a positive integer, got true",
    ),
    (
        "[security]\nlogin_lockout = -300\n",
        {},
        "security.login_lockout: must be a positive number, got -300",
    ),
    (
        "[security]\naudit_maxlen = 0\n",
        {},
        "security.audit_maxlen: must be a positive integer, got 0",
    ),
    (
        '[security]\ntrusted_proxies = ["10.0.0.1:8080"]\n',
        {},
        'security.trusted_proxies[0]: expected "ip" or a CIDR network (no port), '
        'got "10.0.0.1:8080"',
    ),
    (
        '[security]\ntrusted_proxies = ["lb.example"]\n',
        {},
        'security.trusted_proxies[0]: must be an IP address, not a host name: "lb.example"',
    ),
    (
        "[security]\ntoken_tll = 5\n",
        {},
        'security.token_tll: unknown key (did you mean "token_ttl"?)',
    ),
    # [monitor]
    (
        '[monitor]\nhep_listen = "tcp:0.0.0.0:9060"\n',
        {},
        'monitor.hep_listen: only udp is supported (like "udp:0.0.0.0:9060"), '
        'got "tcp:0.0.0.0:9060"',
    ),
    (
        '[monitor]\nhep_listen = "udp:9060"\n',
        {},
        'monitor.hep_listen: expected "transport:host:port", got "udp:9060"',
    ),
    (
        '[monitor]\nhep_listen = "udp:127.0.0.1:5060"\n',
        {},
        'monitor.hep_listen: "udp:127.0.0.1:5060" clashes with sip.listen[0] '
        '("udp:127.0.0.1:5060")',
    ),
    (
        '[monitor]\nlisten = "udp:0.0.0.0:9060"\n',
        {},
        'monitor.listen: unknown key (did you mean "hep_listen"?)',
    ),
    (
        TENANT + '[[monitor.sources]]\naddress = "192.0.2.5"\ntenant = "nope"\n',
        {},
        'monitor.sources[0].tenant: unknown tenant "nope" (tenants: acme)',
    ),
    (
        TENANT + '[[monitor.sources]]\ntenant = "acme"\n',
        {},
        "monitor.sources[0].address: required",
    ),
    (
        TENANT + '[[monitor.sources]]\naddress = "pbx.example"\ntenant = "acme"\n',
        {},
        'monitor.sources[0].address: must be an IP address, not a host name: "pbx.example"',
    ),
    (
        TENANT
        + '[[monitor.sources]]\naddress = "192.0.2.0/24"\ntenant = "acme"\n'
        + '[[monitor.sources]]\naddress = "192.0.2.7:9060"\ntenant = "acme"\n',
        {},
        'monitor.sources[1].address: "192.0.2.7:9060" overlaps monitor.sources[0].address '
        '("192.0.2.0/24"): a HEP sender must identify one source',
    ),
    (
        TENANT
        + '[[monitor.sources]]\naddress = "192.0.2.5"\ntenant = "acme"\n'
        + 'trunks = ["198.51.100.7:99999"]\n',
        {},
        'monitor.sources[0].trunks[0]: expected "ip", "ip:port" or a CIDR network like '
        '"10.0.0.0/24", got "198.51.100.7:99999"',
    ),
    (
        TENANT + '[[monitor.sources]]\naddress = "192.0.2.5"\ntenant = "acme"\nregion = "NL"\n',
        {},
        "monitor.sources[0].region: unknown key (known: address, tenant, trunks, auth_key)",
    ),
    (
        TENANT
        + '[monitor]\nhep_listen = "udp:0.0.0.0:9060"\n'
        + '[[monitor.sources]]\naddress = "192.0.2.5"\ntenant = "acme"\n',
        {},
        'monitor.sources[0].auth_key: required when monitor.hep_listen ("udp:0.0.0.0:9060") '
        "is not a loopback address: a HEP sender's address alone can be forged",
    ),
    (
        TENANT
        + '[[monitor.sources]]\naddress = "192.0.2.5"\ntenant = "acme"\nauth_key = "short"\n',
        {},
        "monitor.sources[0].auth_key: must be at least 16 characters",
    ),
    (
        TENANT
        + '[[monitor.sources]]\naddress = "192.0.2.5"\ntenant = "acme"\n'
        + f'auth_key = "{"k" * 257}"\n',
        {},
        "monitor.sources[0].auth_key: must be at most 256 bytes (UTF-8)",
    ),
    (
        TENANT + '[monitor.sources]\naddress = "192.0.2.5"\ntenant = "acme"\n',
        {},
        "monitor.sources: must be an array of tables ([[monitor.sources]]), got a table",
    ),
]


@pytest.mark.parametrize(("text", "env", "expected"), ERRORS)
def test_error_messages(tmp_path: Path, text: str, env: dict[str, str], expected: str) -> None:
    assert error_of(tmp_path, text, env) == expected


def test_config_error_carries_key_and_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "[sip]\nt1 = -1\n")
    assert (info.value.key, info.value.problem) == ("sip.t1", "must be a positive number, got -1")
    assert isinstance(info.value, ValueError)


# --- TLS files ----------------------------------------------------------------------------


def write_cert(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sipgw.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_files(tmp_path: Path) -> None:
    cert, key = write_cert(tmp_path, "a")
    _, other_key = write_cert(tmp_path, "b")

    # Relative paths are relative to the file's directory.
    settings = load(tmp_path, '[sip]\ntls_cert = "a.crt"\ntls_key = "a.key"\n')
    assert (settings.sip.tls_cert, settings.sip.tls_key) == (cert, key)

    assert error_of(tmp_path, '[sip]\ntls_cert = "a.crt"\n') == (
        "sip.tls_key: required when sip.tls_cert is set"
    )
    assert error_of(tmp_path, '[sip]\ntls_key = "a.key"\n') == (
        "sip.tls_cert: required when sip.tls_key is set"
    )
    assert error_of(tmp_path, '[sip]\ntls_cert = "none.crt"\ntls_key = "a.key"\n') == (
        f"sip.tls_cert: file not found: {tmp_path / 'none.crt'}"
    )
    mismatch = error_of(tmp_path, f'[sip]\ntls_cert = "a.crt"\ntls_key = "{other_key}"\n')
    assert mismatch.startswith(
        "sip.tls_cert: cannot load the certificate with sip.tls_key "
        "(PEM certificate chain + unencrypted matching key expected): "
    )


# --- secrets --------------------------------------------------------------------------------


def test_passwords_and_secrets_never_show(tmp_path: Path) -> None:
    password = "Very-Secret-Pw-987"
    secret = "hmac-secret-0123456789abcdef"
    text = TENANT.replace("Alice-pass-1", password) + (
        f'[sip]\nauth_secret = "{secret}"\n[redis]\nurl = "redis://:redis-pw-42@r:6379/0"\n'
    )
    settings = load(tmp_path, text)
    user = settings.tenants[0].users[0]

    for shown in (repr(settings), str(settings), repr(user), repr(settings.sip)):
        assert password not in shown
        assert secret not in shown
        assert "redis-pw-42" not in shown
        assert user.ha1_md5 not in shown and user.ha1_sha256 not in shown
    assert "auth_secret='***'" in repr(settings.sip)
    assert "url='redis://:***@r:6379/0'" in repr(settings.redis)
    assert settings.sip.auth_secret == secret  # masked in repr only
    # The plain password is nowhere in the object tree.
    assert password not in str(vars(user)) and not hasattr(user, "password")


def test_password_not_echoed_in_errors(tmp_path: Path) -> None:
    weak = TENANT.replace("Alice-pass-1", "weakpassword")
    assert "weakpassword" not in error_of(tmp_path, weak)
    env_error = error_of(tmp_path, TENANT, {"SIPGW_TENANTS__0__USERS__0__PASSWORD": "123456789"})
    assert env_error == (
        "SIPGW_TENANTS__0__USERS__0__PASSWORD (tenants[0].users[0].password): too weak: use at "
        "least 8 characters with upper case, lower case, digit and special character"
    )
    misplaced = TENANT.replace("[[tenants.users]]", "[tenants.users]")
    assert "Alice-pass-1" not in error_of(tmp_path, misplaced)


# --- HA1 ---------------------------------------------------------------------------------------


def test_ha1_from_password_uses_the_tenant_realm(tmp_path: Path) -> None:
    settings = load(tmp_path, TENANT)
    user = settings.tenants[0].users[0]
    assert user.ha1_md5 == compute_ha1("alice", "acme.example", "Alice-pass-1", "MD5")
    assert user.ha1_sha256 == compute_ha1("alice", "acme.example", "Alice-pass-1", "SHA-256")
    assert user.ha1("md5") == user.ha1_md5 and user.ha1("SHA-256") == user.ha1_sha256
    assert user.ha1("SHA-512-256") is None

    realm = TENANT.replace(
        'domains = ["acme.example"]', 'domains = ["acme.example"]\nrealm = "ACME"'
    )
    other = load(tmp_path, realm).tenants[0].users[0]
    assert other.ha1_md5 == compute_ha1("alice", "ACME", "Alice-pass-1", "MD5")


def test_ha1_given_is_kept_lower_case(tmp_path: Path) -> None:
    md5 = compute_ha1("alice", "acme.example", "Whatever-1", "MD5")
    sha = compute_ha1("alice", "acme.example", "Whatever-1", "SHA-256")
    text = TENANT.replace(
        'password = "Alice-pass-1"', f'ha1_md5 = "{md5.upper()}"\nha1_sha256 = "{sha}"'
    )
    user = load(tmp_path, text).tenants[0].users[0]
    assert (user.ha1_md5, user.ha1_sha256) == (md5, sha)


# --- listen specs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "transport", "host", "port", "uri_host"),
    [
        ("udp:127.0.0.1:5060", "udp", "127.0.0.1", 5060, "127.0.0.1"),
        ("TCP:localhost:5060", "tcp", "localhost", 5060, "localhost"),
        ("tcp:[::1]:5060", "tcp", "::1", 5060, "[::1]"),
        ("tls:[2001:DB8::0:1]:5061", "tls", "2001:db8::1", 5061, "[2001:db8::1]"),
        ("udp:0.0.0.0:0", "udp", "0.0.0.0", 0, "0.0.0.0"),
    ],
)
def test_listen_spec_parsing(
    text: str, transport: str, host: str, port: int, uri_host: str
) -> None:
    spec = ListenSpec.parse(text)
    assert (spec.transport, spec.host, spec.port) == (transport, host, port)
    assert spec.uri_host == uri_host
    assert ListenSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("udp:foo", 'expected "transport:host:port", got "udp:foo"'),
        ("udp:[::1:5060", 'expected "transport:host:port", got "udp:[::1:5060"'),
        ("udp:[foo]:5060", 'not an IPv6 address in brackets: "[foo]"'),
        ("udp:bad_host:5060", 'not a host name or IP address: "bad_host"'),
        ("udp:127.0.0.1:http", 'port must be 0-65535, got "http"'),
    ],
)
def test_listen_spec_errors(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        ListenSpec.parse(text)
    assert str(info.value) == problem


def test_wildcard_listen_with_advertise(tmp_path: Path) -> None:
    text = '[sip]\nlisten = ["udp:[::]:5060"]\nadvertise = "2001:db8::5"\n'
    sip = load(tmp_path, text).sip
    assert sip.listen[0].is_wildcard
    assert sip.advertised_host(sip.listen[0]) == "[2001:db8::5]"


# --- profiles ---------------------------------------------------------------------------------


def test_profiles_are_loaded() -> None:
    profiles = load_settings(env={}).profiles
    assert set(profiles) == {
        "linphone",
        "baresip",
        "pjsua",
        "generic-phone",
        "generic-trunk",
        "legacy-md5",
        "basic-md5",
        "no-refer-phone",
        # by User-Agent (issue #15 part 5; tests/unit/test_ua_profiles.py)
        "sipp",
        "microsip",
        "zoiper",
        "yealink",
        "grandstream",
        "snom",
        "polycom",
        "cisco-spa",
        "md5-first-phone",
    }
    assert profiles["legacy-md5"].digest_algorithms == ("MD5",)
    assert profiles["legacy-md5"].supports_refer
    assert not profiles["no-refer-phone"].supports_refer
    basic = profiles["basic-md5"]  # the demo's simulated phone (scripts/run-demo.sh)
    assert (basic.kind, basic.digest_algorithms, basic.auto_answer) == ("phone", ("MD5",), "none")
    assert not basic.supports_refer
    assert profiles["generic-phone"].digest_algorithms == ("SHA-256", "MD5")

    linphone = profiles["linphone"]
    assert (linphone.kind, linphone.caller_id, linphone.auto_answer) == ("phone", ("From",), "none")
    assert linphone.supports_refer and linphone.matches_user_agent(
        "Linphonec/5.1.65 (belle-sip/5.1.0)"
    )

    baresip = profiles["baresip"]
    assert baresip.auto_answer == "call-info" and baresip.supports_refer
    assert baresip.render_auto_answer_headers("192.0.2.1") == (
        "Call-Info: <sip:192.0.2.1>;answer-after=0",
        "Alert-Info: <sip:192.0.2.1>;info=alert-autoanswer",
    )
    assert baresip.matches_user_agent("baresip v1.0.0 (x86_64/linux)")

    pjsua = profiles["pjsua"]
    assert (pjsua.auto_answer, pjsua.auto_answer_headers) == ("answer-mode", ("Answer-Mode: Auto",))

    phone = profiles["generic-phone"]
    assert phone.auto_answer_headers == (
        "Call-Info: <sip:{host}>;answer-after=0",
        "Alert-Info: <sip:{host}>;info=alert-autoanswer",
        "Answer-Mode: Auto",
    )
    assert phone.supports_refer

    trunk = profiles["generic-trunk"]
    assert (trunk.kind, trunk.caller_id) == ("trunk", ("P-Asserted-Identity", "From"))
    assert not trunk.supports_refer and trunk.auto_answer == "none"


def test_profiles_are_referenced(tmp_path: Path) -> None:
    text = TENANT + 'profile = "baresip"\n[[tenants.trunks]]\nname = "p"\nhost = "10.0.0.1"\n'
    settings = load(tmp_path, text)
    tenant = settings.tenants[0]
    assert settings.profiles[tenant.users[0].profile].name == "baresip"
    assert settings.profiles[tenant.trunks[0].profile].kind == "trunk"


def write_profile(directory: Path, name: str, body: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.toml").write_text(body)


def test_profiles_dir_override(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    write_profile(profiles, "generic-phone", 'kind = "phone"\n')
    write_profile(profiles, "generic-trunk", 'kind = "trunk"\nregion = "be"\n')
    write_profile(profiles, "desk", 'kind = "phone"\nuser_agent_patterns = ["^Desk/"]\n')
    settings = load(tmp_path, 'profiles_dir = "profiles"\n' + TENANT + 'profile = "desk"\n')

    assert settings.profiles_dir == profiles
    assert set(settings.profiles) == {"generic-phone", "generic-trunk", "desk"}
    assert settings.profiles["generic-trunk"].region == "BE"
    assert settings.profiles["desk"].matches_user_agent("desk/2.0")
    default = settings.profiles["generic-phone"]
    assert (default.caller_id, default.auto_answer, default.supports_refer) == (
        ("P-Asserted-Identity", "From"),
        "none",
        False,
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('notes = "x"\n', 'profiles.bad.kind: required ("phone" or "trunk")'),
        (
            'kind = "phone"\nauto_anwser = "none"\n',
            'profiles.bad.auto_anwser: unknown key (did you mean "auto_answer"?)',
        ),
        ('kind = "fax"\n', 'profiles.bad.kind: must be one of "phone", "trunk", got "fax"'),
        (
            'kind = "phone"\ncaller_id = []\n',
            "profiles.bad.caller_id: must list at least one header",
        ),
        (
            'kind = "phone"\ncaller_id = ["From:"]\n',
            'profiles.bad.caller_id[0]: not a header name: "From:"',
        ),
        (
            'kind = "phone"\nauto_answer_headers = ["Answer-Mode: Auto"]\n',
            'profiles.bad.auto_answer_headers: must be empty when auto_answer is "none"',
        ),
        (
            'kind = "phone"\nauto_answer = "call-info"\n'
            'auto_answer_headers = ["Answer-Mode: Auto"]\n',
            'profiles.bad.auto_answer_headers: auto_answer is "call-info": '
            'needs a "Call-Info: …" line',
        ),
        (
            'kind = "phone"\nauto_answer = "call-info"\n'
            'auto_answer_headers = ["Call-Info: <sip:{ip}>"]\n',
            "profiles.bad.auto_answer_headers[0]: unknown placeholder {ip} (known: {host})",
        ),
        (
            'kind = "phone"\nauto_answer = "answer-mode"\n'
            'auto_answer_headers = ["Answer-Mode Auto"]\n',
            'profiles.bad.auto_answer_headers[0]: expected one header line "Name: value", '
            'got "Answer-Mode Auto"',
        ),
        (
            'kind = "phone"\nuser_agent_patterns = ["(a+)+$"]\n',
            'profiles.bad.user_agent_patterns[0]: not a User-Agent pattern: "(a+)+$" (1-64 '
            "letters, digits, spaces and '. _ / + -', starting with a letter or digit, "
            "optionally after '^'; regular expressions are not accepted)",
        ),
        (
            'kind = "phone"\nname = "good"\n',
            'profiles.bad.name: must match the file name "bad", got "good"',
        ),
        (
            'kind = "phone"\nregion = "ZZ"\n',
            'profiles.bad.region: unknown region "ZZ" (phonenumbers does not support it)',
        ),
    ],
)
def test_profile_errors(tmp_path: Path, body: str, expected: str) -> None:
    profiles = tmp_path / "profiles"
    write_profile(profiles, "bad", body)
    message = error_of(tmp_path, 'profiles_dir = "profiles"\n')
    assert message == f"{expected} (in {profiles / 'bad.toml'})"


def test_profiles_dir_must_hold_profiles(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert error_of(tmp_path, 'profiles_dir = "empty"\n') == (
        f"profiles_dir: no profiles (*.toml) in {tmp_path / 'empty'}"
    )


def test_missing_default_profile_is_named(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    write_profile(profiles, "desk", 'kind = "phone"\n')
    assert error_of(tmp_path, 'profiles_dir = "profiles"\n' + TENANT) == (
        'tenants[0].default_phone_profile: the default "generic-phone" is missing '
        "(known phone profiles: desk)"
    )


# --- helpers on the model ---------------------------------------------------------------------


def test_trunk_match_forms(tmp_path: Path) -> None:
    text = TENANT + (
        '[[tenants.trunks]]\nname = "v6"\nhost = "2001:db8::10"\ntransport = "tcp"\n'
        '[[tenants.trunks]]\nname = "mixed"\nhost = "10.1.0.1"\n'
        'match = ["10.2.0.0/16", "10.1.0.1:5070", "[2001:db8::20]:5060"]\n'
    )
    v6, mixed = load(tmp_path, text).tenants[0].trunks
    assert v6.match == ("2001:db8::10",)  # TCP: any source port
    assert v6.matches("[2001:db8::10]", 49152)
    assert mixed.match == ("10.2.0.0/16", "10.1.0.1:5070", "[2001:db8::20]:5060")
    assert mixed.matches("10.2.3.4", 1) and mixed.matches("10.1.0.1", 5070)
    assert not mixed.matches("10.1.0.1", 5060)
    assert mixed.matches("2001:db8::20", 5060)


def test_hand_built_model_for_other_tests() -> None:
    alice = User.from_password("alice", "201", "acme.example", "Alice-pass-1", display_name="A")
    tenant = Tenant(id="acme", name="ACME", domains=("acme.example",), users=(alice,))
    assert tenant.realm == "acme.example"
    assert alice.ha1_md5 == compute_ha1("alice", "acme.example", "Alice-pass-1", "MD5")
    assert alice.display_name == "A" and "Alice-pass-1" not in repr(alice)
    settings = Settings(tenants=(tenant,), default_tenant="acme")
    assert settings.tenant_for_domain("elsewhere.example") is tenant


# --- API logins, [events], [security], [monitor] ---------------------------------------------


def test_defaults_of_events_security_and_monitor(tmp_path: Path) -> None:
    settings = load(tmp_path, "")
    events = settings.events
    assert (events.stream_maxlen, events.stream_max_age) == (100_000, 7 * 24 * 3600.0)
    assert (events.max_queue, events.max_buffer, events.subscriber_queue) == (
        10_000, 100_000, 1000,
    )  # fmt: skip
    assert (events.max_subscribers_per_tenant, events.heartbeat) == (200, 15.0)
    assert events.max_age == 7 * 24 * 3600.0
    security = settings.security
    assert (security.token_ttl, security.login_max_failures, security.login_lockout) == (
        12 * 3600.0, 5, 300.0,
    )  # fmt: skip
    assert (security.login_max_failures_per_source, security.audit_maxlen) == (20, 100_000)
    assert security.trusted_proxies == () and not security.is_trusted_proxy("127.0.0.1")
    assert settings.monitor.hep_listen is None and settings.monitor.sources == ()


def test_events_security_and_monitor_sections(tmp_path: Path) -> None:
    text = (
        TENANT
        + """
[events]
stream_maxlen = 5000
stream_max_age = 0
max_queue = 100
max_buffer = 1000
subscriber_queue = 50
max_subscribers_per_tenant = 7
heartbeat = 2.5

[security]
token_ttl = 3600
login_max_failures = 3
login_max_failures_per_source = 10
login_lockout = 60
audit_maxlen = 500
trusted_proxies = ["10.0.0.0/8", "2001:db8::1"]

[monitor]
hep_listen = "udp:0.0.0.0:9060"

[[monitor.sources]]
address = "192.0.2.50"
tenant = "acme"
trunks = ["198.51.100.7:5060", "203.0.113.0/24"]
auth_key = "hep-key-of-pbx-one"

[[monitor.sources]]
address = "[2001:db8::60]:9060"
tenant = "acme"
auth_key = "hep-key-of-pbx-two"
"""
    )
    settings = load(tmp_path, text, env={"SIPGW_EVENTS__HEARTBEAT": "5"})
    events = settings.events
    assert (events.stream_maxlen, events.stream_max_age, events.max_age) == (5000, 0.0, None)
    assert (events.max_queue, events.max_buffer, events.subscriber_queue) == (100, 1000, 50)
    assert (events.max_subscribers_per_tenant, events.heartbeat) == (7, 5.0)
    security = settings.security
    assert (security.token_ttl, security.login_max_failures, security.login_lockout) == (
        3600.0, 3, 60.0,
    )  # fmt: skip
    assert (security.login_max_failures_per_source, security.audit_maxlen) == (10, 500)
    assert security.trusted_proxies == ("10.0.0.0/8", "2001:db8::1")
    assert security.is_trusted_proxy("10.1.2.3") and security.is_trusted_proxy("[2001:db8::1]")
    assert not security.is_trusted_proxy("192.0.2.1") and not security.is_trusted_proxy("x")

    monitor = settings.monitor
    assert str(monitor.hep_listen) == "udp:0.0.0.0:9060"
    first, second = monitor.sources
    assert (first.address, first.tenant) == ("192.0.2.50", "acme")
    assert first.trunks == ("198.51.100.7:5060", "203.0.113.0/24")
    assert (first.auth_key, second.auth_key) == ("hep-key-of-pbx-one", "hep-key-of-pbx-two")
    assert "hep-key-of-pbx" not in repr(settings), "a HEP auth key is a secret"
    assert second.address == "[2001:db8::60]:9060"
    assert monitor.source_for("192.0.2.50", 12345) is first
    assert monitor.source_for("2001:db8::60", 9060) is second
    assert monitor.source_for("2001:db8::60", 9061) is None
    assert monitor.source_for("192.0.2.51", 9060) is None
    assert first.is_trunk("198.51.100.7", 5060) and first.is_trunk("203.0.113.9", 5080)
    assert not first.is_trunk("198.51.100.7", 5061) and not first.is_trunk("bogus", 1)


def test_api_password_is_hashed_with_argon2_and_never_shown(tmp_path: Path) -> None:
    api_password = "Alice-api-42!"
    text = TENANT + f'api_password = "{api_password}"\nrole = "user"\n'
    user = load(tmp_path, text).tenants[0].users[0]
    assert user.api_password_hash is not None
    assert user.api_password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert argon2.PasswordHasher().verify(user.api_password_hash, api_password)
    for shown in (repr(user), str(user), repr(load(tmp_path, text))):
        assert api_password not in shown and user.api_password_hash not in shown
    assert "api_password_hash='***'" in repr(user)
    assert user.api_password == api_password  # for the seed: is the stored hash of it?
    assert (user.role, user.extensions) == ("user", ())
    assert user.visible_extensions == frozenset({"201"})


def test_api_password_hash_given_directly(tmp_path: Path) -> None:
    hashed = argon2.PasswordHasher().hash("Given-hash-1!")
    user = load(tmp_path, TENANT + f'api_password_hash = "{hashed}"\n').tenants[0].users[0]
    assert user.api_password_hash == hashed and user.api_password is None
    costly = hashed.replace("m=65536", "m=1048576")
    assert error_of(tmp_path, TENANT + f'api_password_hash = "{costly}"\n') == (
        "tenants[0].users[0].api_password_hash: Argon2 parameters too costly (at most "
        "m=262144, t=16, p=16): each login would cost that much; make one with "
        "`sipgw password-hash`"
    )


def test_api_password_errors_never_echo_it(tmp_path: Path) -> None:
    for text in (
        TENANT + 'api_password = "weakpassword"\n',
        TENANT + 'api_password = "Alice-pass-1"\n',  # same as the SIP password
        TENANT + 'api_password_hash = "weakpassword"\n',
    ):
        message = error_of(tmp_path, text)
        assert "weakpassword" not in message and "Alice-pass-1" not in message


def test_roles_and_watched_extensions(tmp_path: Path) -> None:
    text = TENANT.replace('password = "Alice-pass-1"', 'password = "Alice-pass-1"\n'
                          'extensions = ["203", "201", "202"]') + (
        '[[tenants.users]]\nusername = "bob"\nextension = "202"\npassword = "Bobby-pass-2"\n'
        'role = "admin"\n'
        '[[tenants.users]]\nusername = "carol"\nextension = "203"\npassword = "Carol-pass-3"\n'
    )  # fmt: skip
    alice, bob, carol = load(tmp_path, text).tenants[0].users
    # Watched extensions may name users further down; the own extension is implied.
    assert (alice.role, alice.extensions) == ("user", ("203", "202"))
    assert alice.visible_extensions == frozenset({"201", "202", "203"})
    assert (bob.role, bob.visible_extensions) == ("admin", frozenset())
    assert carol.api_password_hash is None and carol.role == "user"


def test_demo_api_logins_are_documented_and_resolve() -> None:
    raw = tomllib.loads((REPO / "gateway" / "default.toml").read_text())
    demo = load_settings(env={}).tenants[0]
    documented = (REPO / "docs" / "configuration.md").read_text()
    roles = {}
    for user_raw in raw["tenants"][0]["users"]:
        user = demo.user_by_username(user_raw["username"])
        assert user is not None
        if "api_password" not in user_raw:
            assert user.api_password_hash is None
            continue
        api_password = user_raw["api_password"]
        assert api_password != user_raw["password"]
        assert user.api_password_hash is not None
        assert argon2.PasswordHasher().verify(user.api_password_hash, api_password)
        assert f"`{user.username}` / `{api_password}`" in documented
        roles[user.username] = user.role
    assert roles == {"201": "user", "203": "admin"}


# --- recognition ------------------------------------------------------------------------

REC = TENANT + "[tenants.recognition]\n"


def test_recognition_defaults_and_values(tmp_path: Path) -> None:
    plain = load(tmp_path, TENANT)
    rec = plain.tenants[0].recognition
    assert (rec.enabled, rec.fields, rec.budget_ms, rec.timeout_ms) == (True, ("name",), 20, 2000)
    assert plain.recognition.cache_size == 100_000
    settings = load(
        tmp_path,
        "[recognition]\ncache_size = 10\nnegative_ttl = 0\n"
        + REC
        + 'fields = ["name", "crm_id"]\nbudget_ms = 50\n'
        + '[[tenants.recognition.screen_pop]]\nname = "crm"\n'
        + 'url = "https://crm.example/c/{contact.crm_id}?n={number}"\n'
        + '[[tenants.recognition.screen_pop]]\nname = "new"\nwhen = "miss"\n'
        + 'url = "https://crm.example/new"\n',
    )
    rec = settings.tenants[0].recognition
    assert rec.fields == ("name", "crm_id") and rec.budget_ms == 50
    assert [p.name for p in rec.pops_for("hit")] == ["crm"]
    assert [p.name for p in rec.pops_for("miss")] == ["new"]
    assert rec.pops_for("error") == () and rec.pops_for("pending") == ()
    assert (settings.recognition.cache_size, settings.recognition.negative_ttl) == (10, 0)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("budget_ms = 5000\n", "tenants[0].recognition.budget_ms: must be at most 1000, got 5000"),
        (
            "budget_ms = 100\ntimeout_ms = 50\n",
            "tenants[0].recognition.timeout_ms: must be at least budget_ms (100), got 50",
        ),
        ('fields = ["Name"]\n', "tenants[0].recognition.fields[0]: must be 1-32 of a-z, 0-9 and"),
        ('fields = ["a", "a"]\n', "tenants[0].recognition.fields[1]: duplicate of"),
        ("budget = 5\n", 'tenants[0].recognition.budget: unknown key (did you mean "budget_ms"?)'),
        (
            '[[tenants.recognition.screen_pop]]\nname = "x"\nurl = "https://c.example/{contact.ssn}"\n',
            "tenants[0].recognition.screen_pop[0].url: unknown placeholder",
        ),
        (
            '[[tenants.recognition.screen_pop]]\nname = "x"\nurl = "{contact.name}"\n',
            "tenants[0].recognition.screen_pop[0].url: ",
        ),
        (
            '[[tenants.recognition.screen_pop]]\nname = "x"\nwhen = "late"\nurl = "https://c.example/"\n',
            "tenants[0].recognition.screen_pop[0].when: ",
        ),
    ],
)
def test_recognition_errors_name_the_key(tmp_path: Path, body: str, expected: str) -> None:
    assert error_of(tmp_path, REC + body).startswith(expected)


def test_node_recognition_errors_name_the_key(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[recognition]\nmax_batch = 0\n").startswith(
        "recognition.max_batch: "
    )
