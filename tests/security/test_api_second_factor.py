"""The second factor over HTTP, against a real gateway and its Redis: enrolment with a
token (the QR code an SVG), the two-step login, refusals that say nothing of their
cause, a replayed code, a recovery code used twice, an admin's disable audited, the
"admins" policy making an admin enrol during the login, and the routes in OpenAPI."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from gateway.security import totp
from tests.integration.conftest import GatewayFactory
from tests.integration.gateway import ADMIN, API_PASSWORDS, RECOGNITION, GatewayProcess

pytestmark = [pytest.mark.peers]


class Phone:
    """An authenticator app: the code of now, or of the step after the last one used
    (within the window either way), so no test waits for a time step to pass."""

    def __init__(self, secret: str) -> None:
        self.key = totp.from_base32(secret)
        self.last = -1

    def code(self) -> str:
        step = max(totp.time_step(time.time()), self.last + 1)
        self.last = step
        return totp.hotp(self.key, step)

    def used(self) -> str:
        return totp.hotp(self.key, self.last)


async def call(
    gateway: GatewayProcess, method: str, path: str, body: object = None, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    status, raw = await gateway.http(method, path, body, token=token)
    return status, (json.loads(raw) if raw else {})


async def password_step(gateway: GatewayProcess, user: str) -> dict[str, Any]:
    status, body = await call(
        gateway, "POST", "/v1/auth/login", {"username": user, "password": API_PASSWORDS[user]}
    )
    assert status == 200, body
    return body


async def enrol(gateway: GatewayProcess, user: str) -> tuple[Phone, list[str]]:
    token = await gateway.login(user)
    status, enrolment = await call(gateway, "POST", "/v1/auth/totp/enrol", token=token)
    assert status == 200, enrolment
    assert enrolment["otpauth_uri"].startswith(f"otpauth://totp/sipgw:{user}@acme?secret=")
    assert enrolment["otpauth_uri"].count(enrolment["secret"]) == 1
    prefix = "data:image/svg+xml;base64,"
    assert enrolment["qr_svg"].startswith(prefix)
    assert base64.b64decode(enrolment["qr_svg"][len(prefix) :]).lstrip().startswith(b"<")
    phone = Phone(enrolment["secret"])
    status, confirmed = await call(
        gateway, "POST", "/v1/auth/totp/confirm", {"code": phone.code()}, token=token
    )
    assert status == 200, confirmed
    return phone, confirmed["recovery_codes"]


async def test_enrol_then_log_in_in_two_steps(gateway: GatewayProcess) -> None:
    phone, recovery = await enrol(gateway, "201")
    assert len(set(recovery)) == 10

    first = await password_step(gateway, "201")
    assert first["second_factor"] == "totp" and "token" not in first
    # The challenge is no token.
    assert (await call(gateway, "GET", "/v1/auth/me", token=first["challenge"]))[0] == 401
    status, login = await call(
        gateway, "POST", "/v1/auth/totp/verify",
        {"challenge": first["challenge"], "code": phone.code()},
    )  # fmt: skip
    assert status == 200, login
    assert login["user"] == "201" and login["token_type"] == "Bearer"
    status, me = await call(gateway, "GET", "/v1/auth/totp", token=login["token"])
    assert me == {"policy": "optional", "required": False, "enrolled": True, "pending": False,
                  "recovery_codes_left": 10}  # fmt: skip

    # The code that just worked, again, with a fresh password step: refused.
    replay = await password_step(gateway, "201")
    status, refused = await call(
        gateway, "POST", "/v1/auth/totp/verify",
        {"challenge": replay["challenge"], "code": phone.used()},
    )  # fmt: skip
    assert (status, refused) == (401, {"detail": "invalid code or challenge"})

    # A recovery code, once.
    for expected in (200, 401):
        step = await password_step(gateway, "201")
        status, _ = await call(
            gateway, "POST", "/v1/auth/totp/verify",
            {"challenge": step["challenge"], "recovery_code": recovery[0]},
        )  # fmt: skip
        assert status == expected

    # An enrolled user cannot enrol over it.
    status, conflict = await call(gateway, "POST", "/v1/auth/totp/enrol", token=login["token"])
    assert status == 409 and "enrolled already" in conflict["detail"]


async def test_a_wrong_code_and_a_used_challenge_answer_alike(gateway: GatewayProcess) -> None:
    phone, _ = await enrol(gateway, "202")
    step = await password_step(gateway, "202")
    right = phone.code()
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    answers = []
    for code in (wrong, right):  # the challenge went with the wrong code
        answers.append(
            await call(
                gateway,
                "POST",
                "/v1/auth/totp/verify",
                {"challenge": step["challenge"], "code": code},
            )
        )
    assert answers == [(401, {"detail": "invalid code or challenge"})] * 2


async def test_a_code_without_a_password_step_is_refused(gateway: GatewayProcess) -> None:
    phone, _ = await enrol(gateway, "204")
    code = phone.code()
    for body, status in (
        ({"challenge": "acme." + "A" * 43, "code": code}, 401),
        ({"challenge": "acme.", "code": code}, 401),
        ({"code": code}, 400),
        ({"challenge": "acme." + "A" * 43}, 400),
        ({"challenge": "acme." + "A" * 43, "code": code, "recovery_code": "x"}, 400),
        ({"challenge": "acme." + "A" * 43, "code": code, "username": "204"}, 400),
    ):
        assert (await call(gateway, "POST", "/v1/auth/totp/verify", body))[0] == status, body
    # The login that follows takes the same code: nothing above spent it.
    step = await password_step(gateway, "204")
    status, _ = await call(
        gateway, "POST", "/v1/auth/totp/verify", {"challenge": step["challenge"], "code": code}
    )
    assert status == 200


async def test_an_admin_disables_a_second_factor_and_the_audit_shows_each_step(
    gateway: GatewayProcess,
) -> None:
    phone, _ = await enrol(gateway, "205")
    step = await password_step(gateway, "205")
    await call(gateway, "POST", "/v1/auth/totp/verify", {"challenge": step["challenge"],
                                                          "code": phone.code()})  # fmt: skip
    admin = await gateway.login(ADMIN)
    user = await gateway.login("201")  # not enrolled here: a plain token
    assert (await call(gateway, "DELETE", "/v1/auth/totp/users/205", token=user))[0] == 403
    assert (await call(gateway, "DELETE", "/v1/auth/totp/users/205", token=admin))[0] == 204
    assert (await call(gateway, "DELETE", "/v1/auth/totp/users/205", token=admin))[0] == 404
    assert (await call(gateway, "DELETE", "/v1/auth/totp/users/nobody", token=admin))[0] == 404
    # Back to the password alone.
    assert "token" in await password_step(gateway, "205")

    status, audit = await call(gateway, "GET", "/v1/auth/audit?limit=50", token=admin)
    assert status == 200
    steps = [(e["event"], e["result"]) for e in reversed(audit["entries"]) if e["user"] == "205"]
    assert steps == [
        ("login", "ok"),
        ("totp.enrol", "ok"),
        ("totp.confirm", "ok"),
        ("login", "second_factor"),
        ("login.totp", "ok"),
        ("totp.disable", "ok"),
        ("totp.disable", "not_enrolled"),
        ("login", "ok"),
    ]
    disabled = next(e for e in audit["entries"] if e["event"] == "totp.disable")
    assert disabled["source"].endswith(f"(admin {ADMIN})")


async def test_the_admins_policy_makes_an_admin_enrol_during_the_login(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = await gateway_factory(
        recognition=RECOGNITION + '\n[tenants.totp]\npolicy = "admins"\nissuer = "Acme CTI"\n'
    )
    await gateway.login("201")  # a user: the password gives a token (waits for the seed)
    step = await password_step(gateway, ADMIN)
    assert step["second_factor"] == "enrol" and "token" not in step
    status, enrolment = await call(
        gateway, "POST", "/v1/auth/totp/enrol", {"challenge": step["challenge"]}
    )
    assert status == 200, enrolment
    assert enrolment["otpauth_uri"].startswith(f"otpauth://totp/Acme%20CTI:{ADMIN}@acme?")
    phone = Phone(enrolment["secret"])
    status, done = await call(
        gateway, "POST", "/v1/auth/totp/confirm",
        {"challenge": step["challenge"], "code": phone.code()},
    )  # fmt: skip
    assert status == 200, done
    assert done["role"] == "admin" and len(done["recovery_codes"]) == 10
    assert (await call(gateway, "GET", "/v1/auth/me", token=done["token"]))[0] == 200
    # From now on the admin logs in with a code, and cannot turn it off alone.
    assert (await password_step(gateway, ADMIN))["second_factor"] == "totp"
    status, refused = await call(
        gateway, "POST", "/v1/auth/totp/disable", {"code": phone.code()}, token=done["token"]
    )
    assert status == 403 and "ask an admin" in refused["detail"]
    assert (await password_step(gateway, ADMIN))["second_factor"] == "totp"


async def test_a_user_turns_off_an_optional_second_factor_with_a_current_code(
    gateway: GatewayProcess,
) -> None:
    token = await gateway.login("201")  # before the enrolment: a password was enough
    phone, _ = await enrol(gateway, "201")
    path = "/v1/auth/totp/disable"
    status, refused = await call(gateway, "POST", path, {"code": phone.used()}, token=token)
    assert (status, refused) == (401, {"detail": "invalid code or challenge"})
    assert (await password_step(gateway, "201"))["second_factor"] == "totp"
    assert (await call(gateway, "POST", path, {"code": phone.code()}, token=token))[0] == 204
    assert "token" in await password_step(gateway, "201")  # the password alone again
    status, me = await call(gateway, "GET", "/v1/auth/totp", token=token)
    assert (me["enrolled"], me["recovery_codes_left"]) == (False, 0)
    status, audit = await call(
        gateway, "GET", "/v1/auth/audit?limit=50", token=await gateway.login(ADMIN)
    )
    steps = [e["result"] for e in reversed(audit["entries"]) if e["event"] == "totp.turn_off"]
    assert len(steps) == 2 and steps[0] != "ok" and steps[1] == "ok", steps


async def test_a_user_makes_new_recovery_codes_with_a_current_code(gateway: GatewayProcess) -> None:
    token = await gateway.login("201")  # before the enrolment: a password was enough
    phone, old = await enrol(gateway, "201")
    # Without a code, or with the code already used: nothing changes.
    assert (await call(gateway, "POST", "/v1/auth/totp/recovery-codes", {}, token=token))[0] == 400
    status, refused = await call(
        gateway, "POST", "/v1/auth/totp/recovery-codes", {"code": phone.used()}, token=token
    )
    assert (status, refused) == (401, {"detail": "invalid code or challenge"})
    status, made = await call(
        gateway, "POST", "/v1/auth/totp/recovery-codes", {"code": phone.code()}, token=token
    )
    assert status == 200 and len(set(made["recovery_codes"])) == 10
    assert not set(made["recovery_codes"]) & set(old)
    for code, expected in ((old[1], 401), (made["recovery_codes"][1], 200)):
        step = await password_step(gateway, "201")
        status, _ = await call(
            gateway, "POST", "/v1/auth/totp/verify",
            {"challenge": step["challenge"], "recovery_code": code},
        )  # fmt: skip
        assert status == expected, code
    status, audit = await call(
        gateway, "GET", "/v1/auth/audit?limit=50", token=await gateway.login(ADMIN)
    )
    steps = [e["result"] for e in reversed(audit["entries"]) if e["event"] == "totp.recovery_codes"]
    assert len(steps) == 2 and steps[0] != "ok" and steps[1] == "ok", steps


async def test_the_routes_are_in_openapi(gateway: GatewayProcess) -> None:
    status, document = await call(gateway, "GET", "/openapi.json")
    assert status == 200
    paths = document["paths"]
    for path, method in (
        ("/v1/auth/totp/verify", "post"),
        ("/v1/auth/totp", "get"),
        ("/v1/auth/totp/enrol", "post"),
        ("/v1/auth/totp/confirm", "post"),
        ("/v1/auth/totp/users/{username}", "delete"),
        ("/v1/auth/totp/users/{username}/reset", "post"),
        ("/v1/auth/totp/recovery-codes", "post"),
        ("/v1/auth/totp/disable", "post"),
    ):
        assert method in paths[path], path
    verify = paths["/v1/auth/totp/verify"]["post"]["requestBody"]["content"]["application/json"]
    assert set(verify["schema"]["properties"]) == {"challenge", "code", "recovery_code"}
    assert "second_factor" in paths["/v1/auth/login"]["post"]["responses"]["200"]["description"]
