"""What every extension of a watched tenant is doing now: its dialogs, from the call
events (dialog_info.py says how one event becomes one dialog).

A call concerns one or two extensions: the callee of an inbound call, the caller of an
outbound one, and both ends of an internal call (the event's ``extension`` is the
callee; the caller is the calling number when it is an extension of the tenant).
A terminated dialog leaves the table at once; it is reported once, to the watchers of
its extension (notifier.py keeps it for each watcher until its next NOTIFY).
"""

from __future__ import annotations

from typing import Any

from gateway.blf.dialog_info import DialogView, state_of, updated, view_of
from gateway.config import Settings, Tenant


class Lines:
    def __init__(self, settings: Settings) -> None:
        self._tenants = {t.id: t for t in settings.tenants}
        self._extensions = {t.id: frozenset(u.extension for u in t.users) for t in settings.tenants}
        # tenant -> extension -> call_id -> its dialog there
        self._dialogs: dict[str, dict[str, dict[str, DialogView]]] = {}

    def serves(self, tenant: str, extension: str) -> bool:
        return extension in self._extensions.get(tenant, frozenset())

    def tenant(self, tenant: str) -> Tenant | None:
        return self._tenants.get(tenant)

    def dialogs(self, tenant: str, extension: str) -> list[DialogView]:
        return list(self._dialogs.get(tenant, {}).get(extension, {}).values())

    def apply(self, tenant: str, event: dict[str, Any]) -> list[tuple[str, DialogView]]:
        """Take one call event; the (extension, dialog) pairs it changed."""
        found = self._tenants.get(tenant)
        call_id = event.get("call_id")
        if (
            found is None
            or not isinstance(call_id, str)
            or not str(event.get("type", "")).startswith("call.")
        ):
            return []
        changed = []
        for extension, initiator in self._ends(tenant, event):
            table = self._dialogs.setdefault(tenant, {}).setdefault(extension, {})
            known = table.get(call_id)
            state = state_of(event) or (known.state if known is not None else None)
            if state is None:
                continue  # call.recognized of a call we never saw start
            view = view_of(
                event,
                extension=extension,
                initiator=initiator,
                domain=found.domains[0],
                caller=found.blf.caller,
                state=state,
            )
            if known is not None:
                view = updated(known, view)
            if view == known:
                continue  # held, retrieved, transferred: nothing a lamp shows
            if state == "terminated":
                table.pop(call_id, None)
                if not table:
                    del self._dialogs[tenant][extension]
            else:
                table[call_id] = view
            changed.append((extension, view))
        return changed

    def _ends(self, tenant: str, event: dict[str, Any]) -> list[tuple[str, bool]]:
        extension = event.get("extension")
        if not isinstance(extension, str) or not self.serves(tenant, extension):
            return []
        direction = event.get("direction")
        if direction == "outbound":
            return [(extension, True)]
        ends = [(extension, False)]
        calling = event.get("calling")
        caller = calling.get("number_raw") if isinstance(calling, dict) else None
        found = self._tenants[tenant]
        if direction == "internal" and isinstance(caller, str):
            # The From user of an internal call is the caller's extension or username.
            user = found.user_by_extension(caller) or found.user_by_username(caller)
            if user is not None and user.extension != extension:
                ends.append((user.extension, True))
        return ends
