"""Redis key names of the security layer, in one place.

Everything that belongs to one tenant carries the hash tag ``{tenant}`` (so a Redis
Cluster keeps a tenant's keys in one slot, like ``{tenant}:events``). Keys found
without knowing the tenant (a token, a source address, the tenant list) are global and
prefixed ``sipgw:``.

    sipgw:tenants                     hash    tenant id -> JSON {name, source, created_at}
    {t}:users                         hash    username  -> JSON user record (Argon2 hash…)
    sipgw:token:<sha256 hex>          hash    tenant, user, role, extensions, issued_at,
                                              expires_at; expires with the token
    {t}:tokens:<user> / {t}:tokens:@sync
                                      zset    token hashes of a user (score: expiry, ms),
                                              to revoke them all and drop expired ones
    {t}:token-order:<user> / {t}:token-order:@sync
                                      zset    the same hashes by issue order (score: 1,
                                              2, …): past the cap the oldest is evicted
    {t}:audit                         stream  audit entries of the tenant (capped)
    sipgw:audit                       stream  attempts naming no known tenant (capped)
    {t}:login:fail:<username>         string  failed-login counter (expires)
    sipgw:login:fail:src:<address>    string  failed-login counter of a source (IPv6 /64)
    sipgw:epoch                       string  random id of this Redis's data set, made
                                              when missing: a new one means the data
                                              (tokens, revocations) was lost
    {t}:ticket:<sha256 hex>           string  the hash of the token a subscription ticket
                                              stands for; expires in 30 s, taken (GETDEL)
                                              by the one subscription it opens
    {t}:tickets:<token id>            string  tickets issued to one token in the last 30 s
    {t}:user-settings                 hash    username -> JSON of the web client's per-user
                                              settings ({"auto_open_crm": false})
"""

from __future__ import annotations

TENANTS = "sipgw:tenants"
EPOCH = "sipgw:epoch"
GLOBAL_AUDIT = "sipgw:audit"
SYNC_TOKENS = "@sync"  # the token index of tenant-level (sync) tokens; no username has "@"


def tenant_pattern(tenant: str) -> str:
    """Every key of a tenant, for SCAN (tenant ids hold no glob character)."""
    return f"{{{tenant}}}:*"


def users(tenant: str) -> str:
    return f"{{{tenant}}}:users"


def token(digest: str) -> str:
    return f"sipgw:token:{digest}"


def user_tokens(tenant: str, user: str | None) -> str:
    return f"{{{tenant}}}:tokens:{user or SYNC_TOKENS}"


def token_order(tenant: str, user: str | None) -> str:
    return f"{{{tenant}}}:token-order:{user or SYNC_TOKENS}"


def user_tokens_pattern(tenant: str) -> str:
    return f"{{{tenant}}}:tokens:*"


def ticket(tenant: str, digest: str) -> str:
    return f"{{{tenant}}}:ticket:{digest}"


def tickets_issued(tenant: str, token_ref: str) -> str:
    return f"{{{tenant}}}:tickets:{token_ref}"


def user_settings(tenant: str) -> str:
    return f"{{{tenant}}}:user-settings"


def audit(tenant: str | None) -> str:
    return GLOBAL_AUDIT if tenant is None else f"{{{tenant}}}:audit"


def user_failures(tenant: str, username: str) -> str:
    return f"{{{tenant}}}:login:fail:{username}"


def source_failures(bucket: str) -> str:
    return f"sipgw:login:fail:src:{bucket}"
