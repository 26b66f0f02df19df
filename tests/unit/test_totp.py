"""RFC 6238 TOTP and RFC 4226 HOTP against the RFCs' own test vectors."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.security import totp

# RFC 6238 Appendix B: the seeds are the ASCII "12345678901234567890" repeated to the
# hash's key length (the appendix's reference code, not the 20-byte seed of its table).
SEEDS: dict[totp.Algorithm, bytes] = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
# (time, SHA1, SHA256, SHA512), 8 digits.
APPENDIX_B = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("at", "sha1", "sha256", "sha512"), APPENDIX_B)
def test_rfc6238_appendix_b(at: int, sha1: str, sha256: str, sha512: str) -> None:
    for algorithm, expected in (("sha1", sha1), ("sha256", sha256), ("sha512", sha512)):
        code = totp.totp(SEEDS[algorithm], at, digits=8, algorithm=algorithm)  # type: ignore[arg-type]
        assert code == expected, (algorithm, at)


def test_rfc4226_appendix_d() -> None:
    expected = [
        "755224", "287082", "359152", "969429", "338314",
        "254676", "287922", "162583", "399871", "520489",
    ]  # fmt: skip
    assert [totp.hotp(SEEDS["sha1"], counter) for counter in range(10)] == expected


def test_a_code_matches_its_step_and_one_either_side_only() -> None:
    key = totp.new_secret()
    now = 1_700_000_015.0
    step = totp.time_step(now)
    for delta in (-1, 0, 1):
        code = totp.hotp(key, step + delta)
        assert totp.matching_step(key, code, now) == step + delta
    for delta in (-2, 2):
        assert totp.matching_step(key, totp.hotp(key, step + delta), now) is None
    assert totp.matching_step(key, "12345", now) is None  # wrong length
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in totp.hotp(key, step))
    assert totp.matching_step(key, fullwidth, now) is None  # digits, but not ASCII ones


def test_the_provisioning_uri_is_what_authenticator_apps_read() -> None:
    key = bytes(range(20))
    uri = totp.provisioning_uri(key, issuer="sipgw acme", account="201@acme")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert parts.path == "/sipgw%20acme:201@acme"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {
        "secret": totp.to_base32(key),
        "issuer": "sipgw acme",
        "algorithm": "SHA1",
        "digits": "6",
        "period": "30",
    }
    assert "=" not in query["secret"]
    assert totp.from_base32(query["secret"]) == key
