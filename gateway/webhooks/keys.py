"""Redis names of the webhooks (the layout rules: gateway/security/keys.py).

    {t}:webhooks          hash  subscription id -> JSON record (subscriptions.py),
                                the secret included: it keys every signature
    {t}:webhook-state     hash  per subscription: ``<id>:cursor`` the seq of the last
                                event answered 2xx; ``<id>:lease`` "<owner>|<until ms>",
                                the node delivering it; ``<id>:failing_since`` (epoch
                                seconds) while attempts fail; ``<id>:dead_letters``;
                                ``<id>:delivered``
    {sipgw}:webhook-tenants  set  tenants that have (had) a subscription: what a node
                                looks through to find them (no SCAN on a cluster)

Both tenant keys have fixed names (listed in security/keys.py TENANT_FIXED): deleting a
tenant deletes them. The state sits in one hash with the lease so that a script can
advance the cursor only while its caller holds the lease (a fence: a node that lost
the subscription cannot move the position of the one that took it over).
"""

from __future__ import annotations

from gateway.security import keys as tenant_names

WEBHOOK_TENANTS = tenant_names.WEBHOOK_TENANTS


def subscriptions(tenant: str) -> str:
    return tenant_names.tenant_tag(tenant) + ":webhooks"


def state(tenant: str) -> str:
    return tenant_names.tenant_tag(tenant) + ":webhook-state"


def cursor_field(sub_id: str) -> str:
    return sub_id + ":cursor"


def lease_field(sub_id: str) -> str:
    return sub_id + ":lease"


def failing_field(sub_id: str) -> str:
    return sub_id + ":failing_since"


def dead_field(sub_id: str) -> str:
    return sub_id + ":dead_letters"


def delivered_field(sub_id: str) -> str:
    return sub_id + ":delivered"


def state_fields(sub_id: str) -> list[str]:
    return [
        cursor_field(sub_id), lease_field(sub_id), failing_field(sub_id),
        dead_field(sub_id), delivered_field(sub_id),
    ]  # fmt: skip
