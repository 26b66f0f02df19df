"""SIP messages as an attacker writes them: by hand, minimal, exactly the bytes meant."""

from __future__ import annotations

import secrets

from gateway.sip.digest import DigestClient
from gateway.sip.message import Response, parse_message
from tests.security.canary import Attacker


def request(
    method: str,
    ruri: str,
    *,
    via: tuple[str, int],
    from_: str = "<sip:201@acme.test>;tag=attacker",
    to: str | None = None,
    call_id: str | None = None,
    cseq: int = 1,
    headers: tuple[str, ...] = (),
    body: str = "",
    rport: bool = True,
) -> bytes:
    branch = "z9hG4bK" + secrets.token_hex(6)
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {via[0]}:{via[1]};branch={branch}{';rport' if rport else ''}",
        "Max-Forwards: 70",
        f"From: {from_}",
        f"To: {to or f'<{ruri}>'}",
        f"Call-ID: {call_id or secrets.token_hex(8)}",
        f"CSeq: {cseq} {method}",
        *headers,
        f"Content-Length: {len(body.encode())}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def status_of(data: bytes) -> int:
    msg = parse_message(data)
    assert isinstance(msg, Response), data[:80]
    return msg.status


async def register(
    attacker: Attacker,
    gateway: tuple[str, int],
    user: str,
    password: str,
    *,
    contact: str | None = None,
    domain: str = "acme.test",
    timeout: float = 5.0,
    rport: bool = True,
) -> Response:
    """REGISTER, answer the challenge, and return the final answer."""
    host, port = attacker.address
    contact = contact or f"<sip:{user}@{host}:{port}>"
    call_id = secrets.token_hex(8)

    def register_request(cseq: int, extra: tuple[str, ...] = ()) -> bytes:
        return request(
            "REGISTER",
            f"sip:{domain}",
            via=attacker.address,
            from_=f"<sip:{user}@{domain}>;tag=r{call_id[:6]}",
            to=f"<sip:{user}@{domain}>",
            call_id=call_id,
            cseq=cseq,
            headers=(f"Contact: {contact}", "Expires: 600", *extra),
            rport=rport,
        )

    attacker.send(register_request(1), gateway)
    challenge = await final_answer(attacker, timeout)
    if challenge.status != 401:
        return challenge
    value = challenge.get_all("WWW-Authenticate")[0]
    auth = DigestClient(user, password).authorization(value, "REGISTER", f"sip:{domain}")
    attacker.send(register_request(2, (f"Authorization: {auth}",)), gateway)
    return await final_answer(attacker, timeout)


async def final_answer(attacker: Attacker, timeout: float = 5.0) -> Response:
    """The next final response the attacker's socket receives (provisional ones skipped)."""
    while True:
        data = await attacker.recv(timeout)
        assert data is not None, "the gateway did not answer"
        msg = parse_message(data)
        if isinstance(msg, Response) and msg.status >= 200:
            return msg
