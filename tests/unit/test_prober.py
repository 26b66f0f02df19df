"""The OPTIONS prober without sockets: the health state machine, the probes it sends
through client transactions (hand-moved clock, recording transport), the events it
reports, routing around a down trunk, its configuration and its metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.metrics import GatewayCollector, Gauges, make_registry
from gateway.config import ConfigError, Settings
from gateway.proxy.prober import BRANCH_PREFIX, Health, OptionsProber, PeerChange
from gateway.sip.message import Request
from gateway.stats import Counters

from .proxy_harness import CONFIG, Harness, Sent, settings_from
from .test_proxy import PHONE_202, invite_from_phone, only

CARRIER = ("127.0.0.1", 5080)
BACKUP = ("127.0.0.1", 5090)
T1 = 0.5  # the harness config's sip.t1 (default): Timer F is 64*T1 = 32 s

PROBED = CONFIG.replace(
    'match = ["127.0.0.1:5080", "127.0.0.1:5082"]\n',
    'match = ["127.0.0.1:5080", "127.0.0.1:5082"]\n'
    "options_interval = 10\noptions_down_after = 3\noptions_up_after = 2\n",
) + (
    "\n[[tenants.trunks]]\n"
    'name = "backup"\nhost = "127.0.0.1"\nport = 5090\nmatch = ["127.0.0.1:5090"]\n'
    "options_interval = 10\n"
)


class Prober:
    """A harness with a started prober; `changes` are what it reported."""

    def __init__(self, settings: Settings) -> None:
        self.h = Harness(settings)
        self.changes: list[PeerChange] = []
        self.runs = 0
        self.prober = OptionsProber(self.h.proxy, on_change=self.changes.append, run=self._run)
        self.prober.start()

    def _run(self, fn: object) -> None:
        self.runs += 1
        assert callable(fn)
        fn()

    def probes(self, sent: list[Sent], to: tuple[str, int] | None = None) -> list[Request]:
        out = []
        for s in sent:
            msg = s.msg
            wanted = to is None or (s.target.host, s.target.port) == to
            if isinstance(msg, Request) and msg.method == "OPTIONS" and wanted:
                out.append(msg)
        return out

    def answer(
        self, req: Request, status: int, reason: str = "OK", src: tuple[str, int] = CARRIER
    ) -> None:
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in req.get_all("Via")]
        lines += [
            f"From: {req.get('From')}",
            f"To: {req.get('To')};tag=far",
            f"Call-ID: {req.call_id}",
            f"CSeq: {req.cseq.number} {req.cseq.method}",
            "Content-Length: 0",
        ]
        self.h.feed("\r\n".join(lines) + "\r\n\r\n", src)

    def cycle(self, to: tuple[str, int], status: int | None) -> None:
        """Let the next probe to `to` go out and answer it (None: never answer, until
        its Timer F fires)."""
        sent = self.h.advance(10)
        probes = self.probes(sent, to)
        assert probes, f"no probe to {to} within the interval"
        if status is None:
            self.h.advance(64 * T1)
        else:
            self.answer(probes[-1], status, src=to)  # the newest probe (or a retransmission)

    def is_down(self, name: str) -> bool:
        return self.prober.is_down("acme", name)


@pytest.fixture
def p(tmp_path: Path) -> Prober:
    return Prober(settings_from(PROBED, tmp_path))


# ---------------------------------------------------------------- the state machine ---
def test_health_starts_up_and_goes_down_after_n_failures_in_a_row() -> None:
    health = Health(down_after=3, up_after=2)
    assert health.up
    assert [health.record(False) for _ in range(2)] == [False, False]
    assert health.record(True) is False, "a success in between starts the count again"
    assert [health.record(False) for _ in range(3)] == [False, False, True]
    assert not health.up
    assert health.record(False) is False, "down stays down without a new report"


def test_health_comes_back_up_after_m_successes_in_a_row() -> None:
    health = Health(down_after=1, up_after=2)
    assert health.record(False) and not health.up
    assert health.record(True) is False
    assert health.record(False) is False, "a failure in between starts the count again"
    assert [health.record(True), health.record(True)] == [False, True]
    assert health.up
    assert health.record(True) is False


# ------------------------------------------------------------------- the probes sent ---
def test_first_probes_go_out_at_start_to_each_trunk_over_its_transport(p: Prober) -> None:
    sent = p.h.advance(1.0)  # the first probes are spread over the first second
    carrier, backup = p.probes(sent, CARRIER), p.probes(sent, BACKUP)
    # One probe each (retransmitted after T1 already).
    assert len({r.top_via.branch for r in carrier}) == 1
    assert len({r.top_via.branch for r in backup}) == 1
    req = carrier[0]
    assert req.uri_raw == "sip:127.0.0.1:5080", "the trunk itself, no user"
    branch = req.top_via.branch or ""
    assert branch.startswith(BRANCH_PREFIX) and len(branch) > len(BRANCH_PREFIX) + 8
    assert req.top_via.transport == "UDP" and req.max_forwards == 70
    assert req.get("Contact") == "<sip:sipgw@127.0.0.1:5060>"
    assert req.from_.tag and req.to.tag is None and req.cseq.method == "OPTIONS"
    assert p.h.counters.requests["out", "udp", "OPTIONS"] == 2
    assert p.prober.peer("acme", "carrier").sent == 1  # type: ignore[union-attr]


def test_a_probe_is_retransmitted_by_its_transaction_and_times_out_with_timer_f(
    p: Prober,
) -> None:
    first = p.probes(p.h.advance(1.0), CARRIER)[0]
    later = p.probes(p.h.advance(64 * T1 - 1.0), CARRIER)
    retransmitted = [r for r in later if r.top_via.branch == first.top_via.branch]
    # Timer E: T1, 2*T1, 4*T1, then every T2 (4 s) until Timer F at 64*T1.
    assert len(retransmitted) == 9
    assert all(r.to_bytes() == first.to_bytes() for r in retransmitted)
    peer = p.prober.peer("acme", "carrier")
    assert peer is not None and peer.failed == 1 and peer.up
    assert peer.last_reason == "no answer to OPTIONS within 32 s"


def test_one_probe_in_flight_per_trunk_even_when_timer_f_exceeds_the_interval(
    p: Prober,
) -> None:
    sent = p.h.advance(60)  # interval 10 s, Timer F 32 s: nothing answers
    branches = {r.top_via.branch for r in p.probes(sent, CARRIER)}
    assert len(branches) == 2, "one at start, the next one only once the first timed out"


def test_probes_follow_the_interval_while_answered(p: Prober) -> None:
    for _ in range(5):
        p.cycle(CARRIER, 200)
    peer = p.prober.peer("acme", "carrier")
    assert peer is not None and peer.sent == 5 and peer.failed == 0
    assert peer.rtt.count == 5 and p.changes == []


def test_n_failures_mark_the_trunk_down_and_m_answers_bring_it_back(p: Prober) -> None:
    p.cycle(CARRIER, None)
    p.cycle(CARRIER, None)
    assert not p.is_down("carrier") and p.changes == []
    p.cycle(CARRIER, None)
    assert p.is_down("carrier")
    assert [c for c in p.changes if c.peer == "carrier"] == [
        PeerChange(
            "acme",
            "carrier",
            "udp:127.0.0.1:5080",
            up=False,
            reason="no answer to OPTIONS within 32 s (3 probes in a row)",
        )
    ]
    p.cycle(CARRIER, 200)
    assert p.is_down("carrier") and p.changes[-1].peer == "backup"  # nobody answers it
    p.cycle(CARRIER, 200)
    assert not p.is_down("carrier")
    assert p.changes[-1] == PeerChange(
        "acme", "carrier", "udp:127.0.0.1:5080", up=True,
        reason="OPTIONS answered 200 OK (2 probes in a row)",
    )  # fmt: skip


@pytest.mark.parametrize("status", [200, 404, 405, 408, 483, 486, 500, 603])
def test_any_final_response_but_the_failure_codes_proves_the_trunk_alive(
    p: Prober, status: int
) -> None:
    for _ in range(4):
        p.cycle(CARRIER, status)
    assert not p.is_down("carrier") and p.changes == []


def test_503_counts_as_a_failure(p: Prober) -> None:
    for _ in range(3):
        p.cycle(CARRIER, 503)
    assert p.is_down("carrier")
    assert p.changes[0].reason == "OPTIONS answered 503 OK (3 probes in a row)"
    peer = p.prober.peer("acme", "carrier")
    assert peer is not None and peer.failed == 3 and peer.rtt.count == 3


def test_the_failure_codes_are_the_trunks_own(tmp_path: Path) -> None:
    text = PROBED.replace(
        "options_up_after = 2\n", "options_up_after = 2\noptions_failure_codes = [404, 480]\n"
    )
    p = Prober(settings_from(text, tmp_path))
    for _ in range(3):
        p.cycle(CARRIER, 503)
    assert not p.is_down("carrier"), "503 is alive when the trunk does not list it"
    for _ in range(3):
        p.cycle(CARRIER, 480)
    assert p.is_down("carrier")


def test_a_provisional_response_is_not_an_answer(p: Prober) -> None:
    probe = p.probes(p.h.advance(1.0), CARRIER)[0]
    p.answer(probe, 100, "Trying")
    peer = p.prober.peer("acme", "carrier")
    assert peer is not None and peer.rtt.count == 0 and peer.probe is not None
    p.answer(probe, 200)
    assert peer.rtt.count == 1 and peer.probe is None


def test_a_retransmitted_or_stray_response_changes_nothing(p: Prober) -> None:
    probe = p.probes(p.h.advance(1.0), CARRIER)[0]
    p.answer(probe, 200)
    p.answer(probe, 200)  # retransmission: absorbed by the transaction (Completed)
    p.h.advance(6)  # Timer K (T4) ends the transaction
    p.answer(probe, 503)  # a late answer for a transaction that is gone
    peer = p.prober.peer("acme", "carrier")
    assert peer is not None and peer.rtt.count == 1 and peer.failed == 0


def test_the_prober_reports_nothing_about_trunks_it_does_not_probe(tmp_path: Path) -> None:
    text = PROBED.replace(
        "options_interval = 10\noptions_down_after", "options_interval = 0\noptions_down_after"
    )
    p = Prober(settings_from(text, tmp_path))
    assert [peer.name for peer in p.prober.peers] == ["backup"]
    assert p.probes(p.h.advance(100), CARRIER) == []
    assert not p.is_down("carrier") and not p.prober.is_down("acme", "nonexistent")


# ------------------------------------------------------------------ TCP and errors ---
def test_a_tcp_trunk_is_probed_over_tcp_without_retransmissions(tmp_path: Path) -> None:
    text = PROBED.replace("port = 5090\n", 'port = 5090\ntransport = "tcp"\n')
    p = Prober(settings_from(text, tmp_path))
    sent = p.h.advance(1.0)
    probe = p.probes(sent, BACKUP)[0]
    assert probe.uri_raw == "sip:127.0.0.1:5090;transport=tcp"
    assert probe.top_via.transport == "TCP"
    assert [s.target.transport for s in sent if (s.target.host, s.target.port) == BACKUP] == ["tcp"]
    assert p.probes(p.h.advance(64 * T1 - 2), BACKUP) == [], "TCP retransmits by itself"


def test_a_transport_error_fails_the_probe_at_once(p: Prober) -> None:
    sent = [s for s in p.h.advance(1.0) if (s.target.host, s.target.port) == CARRIER]
    for _ in range(3):
        assert sent and sent[0].on_error is not None
        sent[0].on_error()  # e.g. a refused TCP connect, reported later by the transport
        sent = [s for s in p.h.advance(10) if (s.target.host, s.target.port) == CARRIER]
    assert p.is_down("carrier")
    assert p.changes[0].reason == "OPTIONS could not be sent (transport error) (3 probes in a row)"
    assert p.runs == 3, "errors reported outside a message go through run (re-arms timers)"


def test_a_trunk_we_have_no_listener_for_fails_its_probes(tmp_path: Path) -> None:
    text = PROBED.replace("port = 5090\n", 'port = 5090\ntransport = "tls"\n')
    p = Prober(settings_from(text, tmp_path))  # the harness listens on UDP and TCP only
    p.h.advance(31)
    assert p.is_down("backup")
    assert p.changes[0].reason.startswith("no tls listener to send OPTIONS from")


def test_stop_ends_probing_and_hands_the_prefix_back(p: Prober) -> None:
    p.h.advance(1.0)
    p.prober.stop()
    assert BRANCH_PREFIX not in p.h.proxy.response_handlers
    assert p.h.proxy.directory.health is None
    assert p.probes(p.h.advance(100)) == []


# ---------------------------------------------------------------------------- routing ---
def test_a_call_out_skips_a_down_trunk_and_uses_the_next(p: Prober) -> None:
    for _ in range(3):
        p.cycle(CARRIER, 503)
    assert p.is_down("carrier") and not p.is_down("backup")
    fwd = only(
        invite_from_phone(p.h, "202", PHONE_202, "sip:0612345678@acme.test", "o1"), method="INVITE"
    )
    assert (fwd.target.host, fwd.target.port) == BACKUP
    for _ in range(2):
        p.cycle(CARRIER, 200)
    fwd = only(
        invite_from_phone(p.h, "202", PHONE_202, "sip:0612345678@acme.test", "o2"), method="INVITE"
    )
    assert (fwd.target.host, fwd.target.port) == CARRIER, "back to the first once it is up"


def test_when_every_trunk_is_down_the_first_is_tried_anyway(p: Prober) -> None:
    for _ in range(3):
        sent = p.h.advance(10)
        for to in (CARRIER, BACKUP):
            for probe in p.probes(sent, to)[:1]:
                p.answer(probe, 503, src=to)
    assert p.is_down("carrier") and p.is_down("backup")
    fwd = only(
        invite_from_phone(p.h, "202", PHONE_202, "sip:0612345678@acme.test", "o3"), method="INVITE"
    )
    assert (fwd.target.host, fwd.target.port) == CARRIER


def test_a_trunk_that_is_not_outbound_is_never_a_fallback(tmp_path: Path) -> None:
    text = PROBED.replace("port = 5090\n", "port = 5090\noutbound = false\n")
    p = Prober(settings_from(text, tmp_path))
    for _ in range(3):
        p.cycle(CARRIER, 503)
    fwd = only(
        invite_from_phone(p.h, "202", PHONE_202, "sip:0612345678@acme.test", "o4"), method="INVITE"
    )
    assert (fwd.target.host, fwd.target.port) == CARRIER


# ---------------------------------------------------------------------------- metrics ---
def test_metrics_fold_the_probers_numbers_in_at_scrape_time(p: Prober) -> None:
    for status in (200, 503, 503, 503):
        p.cycle(CARRIER, status)
    gauges = Gauges(
        server_transactions=lambda: 0,
        client_transactions=lambda: 0,
        registered_contacts=lambda: 0,
        stream_connections=lambda: 0,
        draining=lambda: False,
        peers=lambda: p.prober.peers,
    )
    text = generate_latest(make_registry(GatewayCollector(Counters(), gauges, "unit"))).decode()
    samples = {
        (s.name, s.labels.get("peer"), s.labels.get("le")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("sipgw_peer_")
    }
    assert samples["sipgw_peer_up", "carrier", None] == 0
    assert samples["sipgw_peer_up", "backup", None] == 1
    assert samples["sipgw_peer_options_sent_total", "carrier", None] == 4
    assert samples["sipgw_peer_options_failed_total", "carrier", None] == 3
    assert samples["sipgw_peer_options_rtt_seconds_count", "carrier", None] == 4
    assert samples["sipgw_peer_options_rtt_seconds_bucket", "carrier", "+Inf"] == 4
    assert 'sipgw_peer_up{peer="carrier",tenant="acme"} 0.0' in text


# ------------------------------------------------------------------------------ config ---
def test_probe_settings_default_to_30_s_down_after_3_up_after_2_and_503(tmp_path: Path) -> None:
    trunk = settings_from(CONFIG, tmp_path).tenants[0].trunks[0]
    assert trunk.options_interval == 30.0
    assert (trunk.options_down_after, trunk.options_up_after) == (3, 2)
    assert trunk.options_failure_codes == (503,)


KEY = "tenants[0].trunks[0]."


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("options_down_after = 0", "options_down_after: must be an integer from 1 to 100, got 0"),
        ("options_up_after = 1.5", "options_up_after: must be an integer from 1 to 100, got 1.5"),
        (
            "options_interval = 0.01",
            "options_interval: must be 0 (no probing) or at least 0.1 seconds, got 0.01",
        ),
        (
            "options_failure_codes = [200]",
            "options_failure_codes[0]: must be an integer from 300 to 699, got 200",
        ),
        (
            "options_failure_codes = [503, 503]",
            f"options_failure_codes[1]: duplicate of {KEY}options_failure_codes[0] (503)",
        ),
        ("options_failure_codes = 503", "options_failure_codes: must be an array, got 503"),
        ("options_down = 3", 'options_down: unknown key (did you mean "options_down_after"?)'),
    ],
)
def test_probe_settings_are_checked_naming_the_key(tmp_path: Path, line: str, error: str) -> None:
    text = CONFIG.replace(
        'match = ["127.0.0.1:5080", "127.0.0.1:5082"]\n',
        f'match = ["127.0.0.1:5080", "127.0.0.1:5082"]\n{line}\n',
    )
    with pytest.raises(ConfigError) as err:
        settings_from(text, tmp_path)
    assert str(err.value) == KEY + error


def test_an_empty_failure_list_makes_every_answer_count(tmp_path: Path) -> None:
    text = CONFIG.replace(
        'match = ["127.0.0.1:5080", "127.0.0.1:5082"]\n',
        'match = ["127.0.0.1:5080", "127.0.0.1:5082"]\noptions_failure_codes = []\n',
    )
    assert settings_from(text, tmp_path).tenants[0].trunks[0].options_failure_codes == ()
