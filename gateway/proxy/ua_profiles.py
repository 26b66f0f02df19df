"""The SIP profile of a phone whose user names none: chosen by its User-Agent.

A phone's profile (``sip_profiles/*.toml``) is, in this order:

1. the user's own ``profile``: a name in the configuration always wins;
2. the first phone profile, by file name, one of whose ``user_agent_patterns`` matches
   the message's ``User-Agent`` (or ``Server``, in a response);
3. for a message without that header, the User-Agent its registration recorded: the
   binding the message comes from (same transport and source address), so the choice
   made at REGISTER holds for the registration's life. The binding keeps the header
   (``Binding.user_agent``) and is shared between workers and nodes with it;
4. otherwise the tenant's ``default_phone_profile`` (``generic-phone``: RFC 8760 order).

A profile only changes interop details: which digest challenges a phone is offered and
in which order, the auto-answer headers of a click-to-dial INVITE, REFER or third-party
call control. It never decides whether a request is challenged nor what the answer must
prove: the verifier (auth.py) accepts the same algorithms from every phone, and each
needs the password's HA1. A User-Agent claiming a weaker phone therefore gains nothing.

The header is the peer's own text: only its first ``MAX_USER_AGENT`` characters are
looked at, patterns are literal words (``gateway.config.model.user_agent_regex``), and
the memo of header → profile is a bounded LRU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

from gateway.config import Profile, Tenant, User
from gateway.config.model import MAX_USER_AGENT
from gateway.proxy.location import Binding
from gateway.sip.message import Message
from gateway.transport.addresses import Source

# Distinct User-Agent values remembered with their profile: a site has a few dozen
# firmware strings; a peer inventing new ones only ever evicts the oldest.
MEMO_SIZE = 1024


def user_agent_of(msg: Message) -> str | None:
    """The peer's product string: User-Agent in a request, Server in a response."""
    return msg.get("User-Agent") or msg.get("Server")


def binding_from(source: Source, bindings: Iterable[Binding]) -> Binding | None:
    """The registration made from where ``source`` is: the phone that sent this."""
    for binding in bindings:
        if binding.source.transport == source.transport and binding.source.remote == source.remote:
            return binding
    return None


class PhoneProfiles:
    """Chooses phone profiles; built from the loaded profiles, read-only afterwards."""

    def __init__(self, profiles: Mapping[str, Profile], *, memo_size: int = MEMO_SIZE) -> None:
        self._profiles = profiles
        self._recognizable = tuple(
            profile
            for _, profile in sorted(profiles.items())
            if profile.kind == "phone" and profile.user_agent_patterns
        )
        self._matched = functools.lru_cache(maxsize=memo_size)(self._match)

    def by_user_agent(self, user_agent: str) -> Profile | None:
        """The profile whose patterns match the header's first MAX_USER_AGENT characters."""
        return self._matched(user_agent[:MAX_USER_AGENT])

    def _match(self, text: str) -> Profile | None:
        return next((p for p in self._recognizable if p.matches_user_agent(text)), None)

    def choose(
        self,
        tenant: Tenant,
        user: User | None,
        user_agent: str | None,
        registered: Callable[[], Binding | None] = lambda: None,
    ) -> Profile:
        """The profile of ``user``'s phone (``user`` None: a claim not yet proved or
        unknown, which gets what its User-Agent says like anyone). ``registered`` finds
        the phone's registration; asked only when the header is missing."""
        if user is not None and user.profile is not None:
            named = self._profiles.get(user.profile)
            if named is not None:
                return named
        if user_agent is None:
            binding = registered()
            user_agent = binding.user_agent if binding is not None else None
        if user_agent:
            matched = self.by_user_agent(user_agent)
            if matched is not None:
                return matched
        return self.default(tenant)

    def for_message(
        self, tenant: Tenant, user: User | None, msg: Message, source: Source,
        bindings: Callable[[], Iterable[Binding]] = tuple,
    ) -> Profile:  # fmt: skip
        """The profile of the phone that sent ``msg``: its header, else its registration
        among ``bindings()`` (the user's; looked up only when needed)."""
        return self.choose(
            tenant, user, user_agent_of(msg), lambda: binding_from(source, bindings())
        )

    def for_bindings(self, tenant: Tenant, user: User, bindings: Iterable[Binding]) -> Profile:
        """The profile to use towards ``user``'s phones: that of the first binding (the
        highest q, as ``Location.bindings`` orders them), whose REGISTER named it."""
        return self.choose(tenant, user, None, lambda: next(iter(bindings), None))

    def default(self, tenant: Tenant) -> Profile:
        """The tenant's ``default_phone_profile`` (the loader checks that it exists; a
        bare phone profile stands in should a reload have removed it)."""
        name = tenant.default_phone_profile
        return self._profiles.get(name) or Profile(name=name, kind="phone")
