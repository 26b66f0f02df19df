"""Redis key names of the security layer, and the rules every sipgw key follows.

Hash tags (docs/internals.md "Keys"): on a Redis Cluster a key lives in the slot of the
part of its name between the first ``{`` and the next ``}``.

- Everything that belongs to one tenant carries ``{tenant}``, so all of a tenant's keys
  share one slot (one shard), like ``{tenant}:events``: its scripts and transactions
  touch several of them at once, and deleting a tenant touches that shard only.
- The few node-wide keys carry ``{sipgw}`` (one slot for all of them).
- A token is found by its hash alone, once per API request: ``sipgw:token:{<hash>}``
  has a tag of its own, so tokens spread over every shard.

A tenant's keys are never searched for with SCAN (on a cluster it covers one node). A
key with a fixed name is listed in `TENANT_FIXED` (this module names those of every
package, so the security layer can delete a tenant without importing the others);
every other key of a tenant (a user's token index, a source's set, an AOR, a counter…)
is entered in the tenant's index ``{t}:keys`` by the same script or transaction that
creates it (gateway/security/tenant_keys.py).

    {sipgw}:tenants                   hash    tenant id -> JSON {name, source, created_at}
    {t}:users                         hash    username  -> JSON user record (Argon2 hash…)
    sipgw:token:{<sha256 hex>}        hash    tenant, user, role, extensions, issued_at,
                                              expires_at; expires with the token
    {t}:tokens:<user> / {t}:tokens:@sync
                                      zset    token hashes of a user (score: expiry, ms),
                                              to revoke them all and drop expired ones
    {t}:token-order:<user> / {t}:token-order:@sync
                                      zset    the same hashes by issue order (score: 1,
                                              2, …): past the cap the oldest is evicted
    {t}:audit                         stream  audit entries of the tenant (capped)
    {sipgw}:audit                     stream  attempts naming no known tenant (capped)
    {t}:login:fail:<username>         string  failed-login counter (expires)
    {sipgw}:login:fail:src:<address>  string  failed-login counter of a source (IPv6 /64)
    {sipgw}:epoch                     string  random id of this Redis's data set, made
                                              when missing: a new one means the data
                                              (tokens, revocations) was lost
    {sipgw}:layout                    string  the key layout the data set is in (2 = these
                                              names; absent = before hash tags, see
                                              key_migration.py)
    {t}:ticket:<sha256 hex>           string  the hash of the token a subscription ticket
                                              stands for; expires in 30 s, taken (GETDEL)
                                              by the one subscription it opens
    {t}:tickets:<token id>            string  tickets issued to one token in the last 30 s
    {t}:user-settings                 hash    username -> JSON of the web client's per-user
                                              settings ({"auto_open_crm": false})
    {t}:totp                          hash    username -> JSON of the user's TOTP enrolment
                                              (the secret sealed, totp_sealing.py;
                                              confirmed or pending; or an admin's reset),
                                              second_factor.py
    {t}:totp-steps                    hash    username -> the last time step a code was
                                              accepted for (no code is taken twice)
    {t}:totp-recovery                 hash    "<username>:<n>" -> Argon2id hash of one
                                              recovery code; HDEL uses it up
    {t}:login-challenge:<sha256 hex>  string  JSON of a login between its password and its
                                              code (or enrolment); expires in 5 min,
                                              taken (GETDEL) by the step that ends it
    {sipgw}:location:tenants          set     tenants that have had a registration
                                              ({t}:loc:<extension>, runtime/shared_location.py)
    {t}:webhooks, {t}:webhook-state   hash    webhook subscriptions and their delivery state
                                              (gateway/webhooks/keys.py)
    {sipgw}:webhook-tenants           set     tenants that have had a webhook
    {t}:keys                          zset    the tenant's keys whose names are not fixed;
                                              score: when the key is gone for sure (ms
                                              since the epoch; +inf: no expiry)
"""

from __future__ import annotations

import re

NODE_TAG = "{sipgw}"
TENANTS = NODE_TAG + ":tenants"
EPOCH = NODE_TAG + ":epoch"
GLOBAL_AUDIT = NODE_TAG + ":audit"
LAYOUT = NODE_TAG + ":layout"
LAYOUT_VERSION = 2
# The tenants that have had a registration (runtime/shared_location.py loads theirs).
LOCATION_TENANTS = NODE_TAG + ":location:tenants"
# The tenants that have had a webhook (gateway/webhooks: what each node looks through).
WEBHOOK_TENANTS = NODE_TAG + ":webhook-tenants"
SYNC_TOKENS = "@sync"  # the token index of tenant-level (sync) tokens; no username has "@"

# The fixed-name keys of a tenant, of every package (the part after ``{t}``):
# security (here), the contact index (recognition/keys.py), the event bus
# (bus/keys.py) and the webhooks (webhooks/keys.py). tests/unit/test_key_slots.py keeps
# this list in step with theirs.
TENANT_FIXED = (
    ":users",
    ":audit",
    ":user-settings",
    ":totp",
    ":totp-steps",
    ":totp-recovery",
    ":keys",
    ":contacts",
    ":sources",
    ":events",
    ":events:rewrite",
    ":events:lock",
    ":webhooks",
    ":webhook-state",
)

_TENANT = re.compile(r"[a-z0-9-]{1,32}")
_TAGGED = re.compile(r"\{([a-z0-9-]{1,32})\}:.+", re.DOTALL)


def tenant_tag(tenant: str) -> str:
    """``{tenant}``; ValueError for an id that could reach another tenant's keys (the
    configuration and the directory refuse the tenant id "sipgw", `NODE_TAG`'s)."""
    if _TENANT.fullmatch(tenant) is None:
        raise ValueError(f"invalid tenant id {tenant!r}")
    return "{" + tenant + "}"


def tenant_of_key(key: str) -> str | None:
    """The tenant whose tag starts ``key``, or None for a node-wide key."""
    match = _TAGGED.fullmatch(key)
    return None if match is None or "{" + match[1] + "}" == NODE_TAG else match[1]


def tenant_pattern(tenant: str) -> str:
    """Every key of a tenant as a glob, for tests and an operator's check (the code
    finds a tenant's keys through `TENANT_FIXED` and ``{t}:keys``, never by SCAN)."""
    return tenant_tag(tenant) + ":*"


def fixed_keys(tenant: str) -> list[str]:
    tag = tenant_tag(tenant)
    return [tag + suffix for suffix in TENANT_FIXED]


def key_index(tenant: str) -> str:
    """``{t}:keys``: the tenant's keys whose names are not fixed (tenant_keys.py)."""
    return tenant_tag(tenant) + ":keys"


def users(tenant: str) -> str:
    return f"{{{tenant}}}:users"


def token(digest: str) -> str:
    return f"sipgw:token:{{{digest}}}"


def user_tokens(tenant: str, user: str | None) -> str:
    return f"{{{tenant}}}:tokens:{user or SYNC_TOKENS}"


def token_order(tenant: str, user: str | None) -> str:
    return f"{{{tenant}}}:token-order:{user or SYNC_TOKENS}"


def user_tokens_prefix(tenant: str) -> str:
    """What the key of every token index of the tenant starts with."""
    return f"{{{tenant}}}:tokens:"


def ticket(tenant: str, digest: str) -> str:
    return f"{{{tenant}}}:ticket:{digest}"


def tickets_issued(tenant: str, token_ref: str) -> str:
    return f"{{{tenant}}}:tickets:{token_ref}"


def user_settings(tenant: str) -> str:
    return f"{{{tenant}}}:user-settings"


def totp(tenant: str) -> str:
    return f"{{{tenant}}}:totp"


def totp_steps(tenant: str) -> str:
    return f"{{{tenant}}}:totp-steps"


def totp_recovery(tenant: str) -> str:
    return f"{{{tenant}}}:totp-recovery"


def login_challenge(tenant: str, digest: str) -> str:
    return f"{{{tenant}}}:login-challenge:{digest}"


def audit(tenant: str | None) -> str:
    return GLOBAL_AUDIT if tenant is None else f"{{{tenant}}}:audit"


def user_failures(tenant: str, username: str) -> str:
    return f"{{{tenant}}}:login:fail:{username}"


def source_failures(bucket: str) -> str:
    return f"{NODE_TAG}:login:fail:src:{bucket}"


# -- the names before hash tags (key layout 1), for key_migration.py --------------------
LEGACY_RENAMED = {
    "sipgw:tenants": TENANTS,
    "sipgw:epoch": EPOCH,
    "sipgw:audit": GLOBAL_AUDIT,
}
LEGACY_TOKEN_PREFIX = "sipgw:token:"


def legacy_token_digest(key: str) -> str | None:
    """The hash of a token stored under its layout-1 name ``sipgw:token:<hash>``."""
    if not key.startswith(LEGACY_TOKEN_PREFIX):
        return None
    digest = key[len(LEGACY_TOKEN_PREFIX) :]
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None
