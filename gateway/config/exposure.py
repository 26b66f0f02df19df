"""Configurations that must not face a network: the demo, published passwords, plain HTTP.

Checked last by the loader, on settings that are otherwise valid, so nothing has been
bound or connected yet when one is refused:

- The embedded demo (gateway/default.toml, what ``make run`` loads) and any
  configuration holding a password printed in the docs or examples (README.md,
  docs/*.md, examples/*, demo/*, the demo itself) listen on the loopback only: anyone
  can read those passwords, the demo's admin among them.
- Plain HTTP carries passwords and bearer tokens in clear text: on an address that is
  not the loopback it needs ``http.allow_plain_http = true`` (a TLS-terminating reverse
  proxy in front), else ``http.tls_cert``/``tls_key``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gateway.config.errors import ConfigError
from gateway.config.model import Settings
from gateway.config.syntax import is_loopback

# Every password printed in the repository's docs, examples and demo: only ever fit for
# the loopback. tests/security/test_demo_exposure.py scans those files, so a password
# added to a doc without being added here (or left here after leaving the docs) fails.
PUBLISHED_PASSWORDS: frozenset[str] = frozenset(
    {
        "Demo-201-Only!",  # gateway/default.toml, README.md
        "Demo-202-Only!",
        "Demo-203-Only!",
        "Demo-Api-201!",  # gateway/default.toml, docs/configuration.md, scripts/run-demo.sh
        "Demo-Admin-203!",  # the demo's admin
        "Change-Me-201!",  # examples/sipgw.toml
        "Change-Me-202!",
        "Change-Me-1001!",
    }
)
_PASSWORD_KEYS = ("password", "api_password")


def published_passwords_in(raw: Mapping[str, Any]) -> Iterator[str]:
    """The keys (``tenants[0].users[1].password``) of the raw configuration, after the
    environment's overrides, that hold a published password."""
    tenants = raw.get("tenants")
    for i, tenant in enumerate(tenants if isinstance(tenants, list) else ()):
        users = tenant.get("users") if isinstance(tenant, dict) else None
        for j, user in enumerate(users if isinstance(users, list) else ()):
            for key in _PASSWORD_KEYS:
                if isinstance(user, dict) and user.get(key) in PUBLISHED_PASSWORDS:
                    yield f"tenants[{i}].users[{j}].{key}"


def check_exposure(settings: Settings, raw: Mapping[str, Any], *, embedded: bool) -> None:
    """Raise ``ConfigError`` naming the listener when a public-password configuration
    (``embedded``: the built-in demo) listens beyond the loopback, or when plain HTTP
    does without ``http.allow_plain_http``."""
    published = next(published_passwords_in(raw), None)
    if embedded or published is not None:
        why = (
            "the demo configuration, whose passwords are public,"
            if embedded
            else f"this configuration, which holds a published password ({published}),"
        )
        fix = (
            "give a deployment its own file (SIPGW_CONFIG) with its own passwords"
            if embedded
            else "set a password of your own"
        )
        for i, spec in enumerate(settings.sip.listen):
            if not is_loopback(spec.host):
                raise ConfigError(
                    f"sip.listen[{i}]",
                    f'{why} refuses a non-loopback listener ("{spec}"); {fix}',
                )
        if not is_loopback(settings.http.host):
            raise ConfigError(
                "http.listen",
                f'{why} refuses a non-loopback listener ("{settings.http.listen}"); {fix}',
            )
    http = settings.http
    if http.tls_cert is None and not http.allow_plain_http and not is_loopback(http.host):
        raise ConfigError(
            "http.listen",
            f'plain HTTP on "{http.listen}", which is not the loopback, would carry passwords '
            "and tokens in clear text: set http.tls_cert and http.tls_key, or "
            "http.allow_plain_http = true when a TLS-terminating proxy is in front",
        )
