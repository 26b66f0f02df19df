"""The pure parts of the load benchmark (bench/): sipp output parsing, the step method,
/proc parsing, log parsing and the result document. No process is started here."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bench import SCHEMA, procstat, report
from bench.kamailio import parse_kamailio_log
from bench.sipgw import SipgwTarget, parse_json_log, parse_labelled, render_config
from bench.sipp import (
    MAX_SOCKET,
    PER_CALL,
    SippCommand,
    SippCounts,
    achieved_rate,
    hms_to_ms,
    parse_rtt_csv,
    parse_stat_csv,
    rtt_freq,
    scenario_path,
)
from bench.steps import (
    Criteria,
    StepFigures,
    judge,
    max_clean_rate,
    percentile,
    response_summary,
    search,
    spread,
)

# -- sipp's statistics CSV ------------------------------------------------------------------

# Shaped like sipp 3.6.1's -trace_stat output: ';'-separated, a trailing ';', date columns
# that hold tabs, cumulative (C) and periodic (P) columns.
STAT_CSV = (
    "StartTime;LastResetTime;CurrentTime;ElapsedTime(P);ElapsedTime(C);TargetRate;"
    "CallRate(P);CallRate(C);TotalCallCreated;CurrentCall;SuccessfulCall(P);"
    "SuccessfulCall(C);FailedCall(P);FailedCall(C);FailedMaxUDPRetrans(C);"
    "FailedUnexpectedMessage(C);FailedTimeoutOnRecv(C);DeadCallMsgs(C);OutOfCallMsgs(C);"
    "Retransmissions(P);Retransmissions(C);ResponseTime1(C);\n"
    "2026-11-22\t05:29:28.9\t1795325368.9;2026-11-22\t05:29:29.9\t1795325369.9;"
    "2026-11-22\t05:29:29.9\t1795325369.9;00:00:01;00:00:01;100;95;95;95;5;90;90;0;0;0;0;0;"
    "0;0;0;0;00:00:00:001000;\n"
    "2026-11-22\t05:29:28.9\t1795325368.9;2026-11-22\t05:29:31.0\t1795325371.0;"
    "2026-11-22\t05:29:31.0\t1795325371.0;00:00:00;00:00:02;100;0;94.74;200;0;0;196;0;4;1;"
    "2;1;3;0;0;7;00:00:00:012500;\n"
)


def test_stat_csv_rows_and_last_row_counts() -> None:
    rows = parse_stat_csv(STAT_CSV)
    assert len(rows) == 2
    assert rows[0]["StartTime"].startswith("2026-11-22\t")
    counts = SippCounts.from_row(rows[-1])
    assert counts == SippCounts(
        created=200,
        successful=196,
        failed=4,
        retransmissions=7,
        failed_unexpected=2,
        failed_timeouts=2,  # FailedTimeoutOnRecv + FailedMaxUDPRetrans
        dead_call_messages=3,
        out_of_call_messages=0,
        mean_response_ms=12.5,
    )


def test_stat_csv_empty_and_header_only() -> None:
    assert parse_stat_csv("") == []
    assert parse_stat_csv(STAT_CSV.splitlines()[0] + "\n") == []
    assert SippCounts.from_row({}).created == 0


@pytest.mark.parametrize(
    ("text", "ms"),
    [("00:00:00:012000", 12.0), ("00:00:01:000500", 1000.5), ("01:02:03:000000", 3723000.0)],
)
def test_hms_to_ms(text: str, ms: float) -> None:
    assert hms_to_ms(text) == ms


def test_hms_to_ms_garbage_is_nan() -> None:
    assert math.isnan(hms_to_ms(""))
    assert math.isnan(hms_to_ms("12ms"))


# -- sipp's response-time CSV ---------------------------------------------------------------

RTT_CSV = "Date_ms;response_time_ms;rtd_no\n12.001;0;1\n24.001;3;1\n30.5;9;2\n44.001;1;1\n50;7"


def test_rtt_csv_keeps_one_marker_and_skips_header_and_cut_lines() -> None:
    samples = parse_rtt_csv(RTT_CSV)
    assert [(s.at_ms, s.rt_ms) for s in samples] == [(12.001, 0.0), (24.001, 3.0), (44.001, 1.0)]
    assert [s.rt_ms for s in parse_rtt_csv(RTT_CSV, rtd=2)] == [9.0]


def test_achieved_rate_counts_intervals_between_answers() -> None:
    samples = parse_rtt_csv("\n".join(f"{i * 10};1;1" for i in range(101)))  # 0..1000 ms
    assert achieved_rate(samples) == pytest.approx(100.0)
    assert achieved_rate(samples[:10]) == pytest.approx(100.0)  # few: first to last
    assert achieved_rate(samples[:1]) == 0.0
    assert achieved_rate([]) == 0.0


def test_achieved_rate_ignores_a_late_tail_but_not_a_slow_chain() -> None:
    steady = [f"{i * 10};1;1" for i in range(100)]
    late_last = parse_rtt_csv("\n".join([*steady, "1300;300;1"]))  # one answer 300 ms late
    assert achieved_rate(late_last) == pytest.approx(100.0, rel=0.02)
    slow = parse_rtt_csv("\n".join(f"{i * 12.5};1;1" for i in range(101)))  # 80/s
    assert achieved_rate(slow) == pytest.approx(80.0)


# -- sipp command lines ---------------------------------------------------------------------


def test_every_bench_scenario_is_a_bench_copy() -> None:
    for name in ("uac", "uas", "register_uac", "options_uac"):
        path = scenario_path(name)
        assert path.parent.name == "scenarios" and path.parent.parent.name == "bench"
    with pytest.raises(FileNotFoundError):
        scenario_path("no_such_scenario")


def test_sipp_command_has_the_harness_options(tmp_path: Path) -> None:
    cmd = SippCommand(
        scenario="uac",
        workdir=tmp_path,
        remote="127.0.0.1:5060",
        local_port=15000,
        service="+31201234567",
        calls=400,
        rate=200,
        limit=200,
        hold_ms=100,
        timeout_s=12.2,
        recv_timeout_ms=4000,
        rtt=True,
        keys={"domain": "127.0.0.1"},
    )
    argv = cmd.argv("sipp")
    joined = " ".join(argv)
    assert argv[:4] == ["sipp", "-sf", str(scenario_path("uac")), "127.0.0.1:5060"]
    for expected in (
        "-t u1", "-i 127.0.0.1", "-p 15000", "-nostdin", "-m 400", "-r 200", "-l 200",
        "-d 100", "-timeout 13s -timeout_error", "-recv_timeout 4000", "-trace_rtt",
        f"-stf {tmp_path / 'stats.csv'}", "-key domain 127.0.0.1", "-buff_size",
        "-rtt_freq 200",
    ):  # fmt: skip
        assert expected in joined
    assert "-au" not in argv and "-max_socket" not in argv


def test_the_uac_sends_each_call_from_its_own_socket_for_every_implementation() -> None:
    from bench.scenarios import UAC_TRANSPORT

    assert UAC_TRANSPORT == PER_CALL == "un"
    cmd = SippCommand(scenario="uac", workdir=Path("/x"), remote="127.0.0.1:5060",
                      calls=300, rtt=True, transport=UAC_TRANSPORT)  # fmt: skip
    joined = " ".join(cmd.argv("sipp"))
    # sipp's default of 50000 sockets is refused under RLIMIT_NOFILE 20000.
    assert f"-t un -max_socket {MAX_SOCKET}" in joined and MAX_SOCKET < 20000
    assert "-rtt_freq 100" in joined  # a divisor of 300: every call's time is written


def test_rtt_freq_divides_the_calls() -> None:
    assert rtt_freq(400) == 200 and rtt_freq(150) == 50 and rtt_freq(1500) == 100
    assert rtt_freq(7) == 1 and rtt_freq(None) == 200 and rtt_freq(0) == 200


# -- the step method ------------------------------------------------------------------------


def step(
    rate: int,
    *,
    failed: int = 0,
    retrans: int = 0,
    achieved: float | None = None,
    attempted: int | None = None,
    duration: float = 4.0,
    p50: float = 2.0,
) -> StepFigures:
    requested = round(rate * duration)
    attempted = requested if attempted is None else attempted
    return StepFigures(
        offered_rate=rate,
        duration_s=duration,
        requested=requested,
        attempted=attempted,
        successful=attempted - failed,
        failed=failed,
        retransmissions=retrans,
        messages=attempted * 6,
        achieved_rate=rate if achieved is None else achieved,
        response_ms=response_summary([p50 - 1, p50, p50 + 1]),
        cpu_s=0.5,
        wall_s=duration,
    )


def test_a_clean_step() -> None:
    s = judge(step(100), Criteria())
    assert s.clean and s.unclean_reasons == []


@pytest.mark.parametrize(
    ("figures", "reason"),
    [
        # 0.1 % of 400 calls is 0.4 calls: one failure is already too many.
        (step(100, failed=1), "failed 1/400"),
        # Retransmissions above 1 % of the 2400 messages (24).
        (step(100, retrans=25), "retransmissions 25/2400"),
        (step(100, achieved=89.9), "achieved 90/s of 100/s"),
        (step(100, attempted=399), "created 399 of 400"),
        (step(100, attempted=0), "failed 0/0"),
        (step(100, p50=101.0), "median response 101 ms"),
    ],
)
def test_unclean_steps_say_why(figures: StepFigures, reason: str) -> None:
    s = judge(figures, Criteria())
    assert not s.clean
    assert any(reason in r for r in s.unclean_reasons), s.unclean_reasons


def test_limits_are_inclusive_where_documented() -> None:
    # Exactly 1 % retransmissions is still clean; exactly 0.1 % failed is not.
    assert judge(step(100, retrans=24), Criteria()).clean
    assert judge(step(100, achieved=90.0), Criteria()).clean
    assert judge(step(100, p50=100.0), Criteria()).clean
    assert not judge(step(1000, failed=4), Criteria()).clean  # 4/4000 = 0.1 %
    assert judge(step(1000, failed=3), Criteria()).clean  # 0.075 %


def test_search_stops_after_the_first_unclean_step() -> None:
    offered: list[int] = []

    def run(rate: int) -> StepFigures:
        offered.append(rate)
        return step(rate, retrans=0 if rate <= 600 else 5000)

    result = search([600, 100, 300, 1000, 2000], run, Criteria())
    assert offered == [100, 300, 600, 1000]  # sorted, and 2000 never offered
    assert result.max_clean_rate == 600
    assert result.stop_reason.startswith("unclean at 1000/s: retransmissions")


def test_search_when_every_or_no_step_is_clean() -> None:
    assert search([100, 200], step, Criteria()).max_clean_rate == 200
    assert "lower bound" in search([100, 200], step, Criteria()).stop_reason
    failing = search([100, 200], lambda r: step(r, failed=10), Criteria())
    assert failing.max_clean_rate == 0
    assert len(failing.steps) == 1


def test_search_respects_its_deadline() -> None:
    now = [0.0]

    def run(rate: int) -> StepFigures:
        now[0] += 10  # each step takes 10 s
        return step(rate)

    result = search(
        [100, 200, 300, 400], run, Criteria(), deadline=25, clock=lambda: now[0], step_cost_s=6
    )
    # 0 + 6 <= 25 run; 10 + 6 <= 25 run; 20 + 6 > 25 stop.
    assert [s.offered_rate for s in result.steps] == [100, 200]
    assert result.max_clean_rate == 200
    assert result.stop_reason.startswith("time budget exhausted before 300/s")


def test_max_clean_rate_ignores_clean_steps_after_an_unclean_one() -> None:
    steps = [judge(step(r, failed=5 if r == 200 else 0), Criteria()) for r in (100, 200, 300)]
    assert max_clean_rate(steps) == 100


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7
    assert percentile([], 50) is None
    assert response_summary([])["p99"] is None
    assert response_summary([4.0, 0.0, 8.0]) == {
        "p50": 4.0, "p90": 8.0, "p99": 8.0, "max": 8.0, "mean": 4.0, "samples": 3,
    }  # fmt: skip


def test_spread() -> None:
    assert spread([600, 400, 800]) == {"median": 600, "min": 400, "max": 800}
    assert spread([]) == {"median": None, "min": None, "max": None}


def test_step_json_has_derived_figures() -> None:
    data = step(100, failed=2, retrans=12).to_json()
    assert data["failed_fraction"] == pytest.approx(2 / 400)
    assert data["retrans_fraction"] == pytest.approx(12 / 2400)
    assert data["cpu_ms_per_call"] == pytest.approx(1000 * 0.5 / 398, abs=1e-4)
    assert data["proxy_cores"] == pytest.approx(0.125)
    json.dumps(data)  # serializable as is


# -- /proc ----------------------------------------------------------------------------------


def test_parse_proc_stat_with_a_hostile_command_name() -> None:
    # comm may hold spaces and ')' (prctl PR_SET_NAME): fields are split after the last ')'.
    line = (
        "4242 (kamailio (udp) x) S 4200 4242 4242 0 -1 4194560 1000 0 0 0 "
        "123 45 6 7 20 0 1 0 100 1000000 500 18446744073709551615"
    )
    s = procstat.parse_stat(line)
    assert (s.pid, s.comm, s.state, s.ppid) == (4242, "kamailio (udp) x", "S", 4200)
    assert (s.utime, s.stime, s.cutime, s.cstime) == (123, 45, 6, 7)
    assert s.own_ticks == 168 and s.reaped_children_ticks == 13


def _stat(pid: int, ppid: int, ticks: int, children: int = 0) -> procstat.ProcStat:
    return procstat.ProcStat(pid, "p", "S", ppid, ticks, 0, children, 0)


def test_tree_cpu_counts_descendants_and_reaped_children_only() -> None:
    stats = [
        _stat(1, 0, 1000),  # init: not ours
        _stat(10, 1, 5, children=20),  # the proxy's main process; reaped workers: 20
        _stat(11, 10, 100),  # a worker
        _stat(12, 10, 50),  # another worker
        _stat(13, 12, 7),  # a grandchild
        _stat(20, 1, 999),  # an unrelated process
    ]
    assert sorted(procstat.tree_pids(10, stats)) == [10, 11, 12, 13]
    assert procstat.tree_ticks(10, stats) == 5 + 20 + 100 + 50 + 7
    assert procstat.tree_ticks(99, stats) == 0  # gone


def test_host_cpu_busy_fraction() -> None:
    before = procstat.parse_host_cpu(
        "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n"
    )
    after = procstat.parse_host_cpu("cpu  250 0 100 1000 50 0 0 0 7 0\n")
    assert before == (150, 1000)
    # busy +200 of total +400 (user +150, system +50, idle +200); guest not added twice.
    assert procstat.busy_fraction(before, after) == pytest.approx(0.5)
    assert procstat.busy_fraction(before, before) == 0.0
    with pytest.raises(ValueError):
        procstat.parse_host_cpu("intr 1 2 3")


def test_small_proc_parsers() -> None:
    assert procstat.parse_pss_kib("Rss:   2048 kB\nPss:   1536 kB\nShared: 1 kB\n") == 1536
    assert procstat.parse_pss_kib("") == 0
    snmp = (
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
        "Udp: 1058169 19188 34469 1114057 34400 3\n"
        "UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n"
    )
    assert procstat.parse_udp_snmp(snmp)["RcvbufErrors"] == 34400
    assert procstat.parse_udp_snmp("") == {}
    assert procstat.parse_cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == (
        "AMD EPYC 7B13"
    )
    net_udp = (
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
        "  timeout inode ref pointer drops\n"
        "  123: 0100007F:3A98 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 150014 2 00000000cb91cf35 17\n"
        "  456: 00000000:13C4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 150010 2 00000000c6a905a7 0\n"
        "  457: 0100007F:3A98 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 150011 2 00000000c6a905a8 3\n"
    )
    assert procstat.parse_udp_sockets(net_udp) == {15000: 20, 5060: 0}
    # By socket inode: the sockets a process tree holds (workers' own ports included).
    assert procstat.parse_udp_socket_drops(net_udp) == {150014: 17, 150010: 0, 150011: 3}
    ss = (
        "State  Recv-Q Send-Q Local Address:Port  Peer Address:PortProcess\n"
        "UNCONN 0      0          127.0.0.1:15186      0.0.0.0:*\n"
        "\t skmem:(r0,rb8388608,t0,tb8388608,f4096,w0,o0,bl0,d12)\n"
    )
    assert procstat.parse_ss_skmem(ss) == {"rcvbuf": 8388608, "sndbuf": 8388608}
    assert procstat.parse_ss_skmem("") == {}
    assert procstat.parse_meminfo_kib("MemTotal:       24576000 kB\nMemFree: 1 kB\n") == 24576000


# -- proxy logs -----------------------------------------------------------------------------


def test_sipgw_json_log_levels() -> None:
    text = "\n".join(
        [
            json.dumps({"level": "info", "msg": "started"}),
            json.dumps({"level": "warning", "msg": "slow lookup"}),
            json.dumps({"level": "error", "msg": "send failed"}),
            "Traceback (most recent call last):",
            "",
        ]
    )
    text += "\n/x/websockets_impl.py:41: UvicornDeprecationWarning: deprecated\n"
    assert parse_json_log(text) == [
        ("warning", "slow lookup"),
        ("error", "send failed"),
        ("error", "Traceback (most recent call last):"),
        ("other", "/x/websockets_impl.py:41: UvicornDeprecationWarning: deprecated"),
    ]


def test_kamailio_log_lines_group_by_message() -> None:
    text = (
        " 0(19448) INFO: <core> [main.c:1]: hello\n"
        " 1(19797) ERROR: <core> [core/mem/f_malloc.c:498]: fm_malloc(0x7ffb952e4000, 8336)"
        " called from tm; Free fragment not found!\n"
        " 2(19798) ERROR: <core> [core/mem/f_malloc.c:498]: fm_malloc(0x7ffb952e5000, 4672)"
        " called from tm; Free fragment not found!\n"
        "\x1b[31m 1(19797) WARNING: tm [t_reply.c:1]: late reply\x1b[0m\n"
    )
    records = parse_kamailio_log(text)
    assert [level for level, _ in records] == ["error", "error", "warning"]
    assert records[0][1] == records[1][1]  # pointers and sizes normalized away


def test_sipgw_config_trusts_the_uac_address_and_uses_md5_for_201() -> None:
    config = render_config(5060, 8080, 5080, "redis://127.0.0.1:6400/0")
    assert 'url = "redis://127.0.0.1:6400/0"' in config
    assert 'listen = ["udp:127.0.0.1:5060"]' in config
    # By address alone: the UAC sends each call from a port of its own (sipp -t un).
    assert tomllib.loads(config)["tenants"][0]["trunks"][0]["match"] == ["127.0.0.1"]
    assert 'profile = "legacy-md5"' in config
    assert 'level = "WARNING"' in config
    assert "options_interval = 0" in config
    assert tomllib.loads(config)["node"] == {"name": "bench-5060"}


def test_sipgw_2w_runs_two_workers_on_free_own_ports() -> None:
    from bench.runner import TARGETS

    config = tomllib.loads(render_config(5060, 8080, 5080, "redis://x", workers=2))
    assert config["node"] == {"name": "bench-5060", "workers": 2, "worker_port_step": 0}
    target = TARGETS["sipgw-2w"]()
    assert isinstance(target, SipgwTarget)
    assert (target.label, target.impl, target.workers) == ("sipgw-2w", "sipgw", 2)
    assert "worker processes" in target.notes
    assert tomllib.loads(target.config_text(5060, 8080, 5080, "redis://x"))["node"]["workers"] == 2
    assert [TARGETS[label]().label for label in TARGETS] == list(TARGETS)


def test_worker_metrics_by_label() -> None:
    text = (
        "# HELP sipgw_worker_up 1 for each worker process whose counters are in\n"
        'sipgw_worker_up{worker="0"} 1.0\n'
        'sipgw_worker_up{worker="1"} 1.0\n'
        'sipgw_worker_requests_total{worker="0"} 14476.0\n'
        'sipgw_worker_requests_total{worker="1"} 15283.0\n'
        'sipgw_worker_requests_created{worker="1"} 1.7e9\n'
        'sipgw_transport_events_total{event="relayed_to_worker",transport="udp"} 3.0\n'
    )
    assert parse_labelled(text, "sipgw_worker_requests_total", "worker") == {
        "0": 14476.0, "1": 15283.0,
    }  # fmt: skip
    assert parse_labelled(text, "sipgw_worker_up", "worker") == {"0": 1.0, "1": 1.0}
    assert parse_labelled(text, "sipgw_transport_events_total", "event") == {
        "relayed_to_worker": 3.0
    }
    assert parse_labelled(text, "sipgw_nothing", "worker") == {}


def test_search_shares_follow_what_each_search_needs() -> None:
    from bench.runner import search_share

    needs = {"sipgw": 20.0, "kamailio-1w": 30.0, "kamailio-2w": 30.0}
    first = {"sipgw": 0, "kamailio-1w": 1, "kamailio-2w": 1}
    # Enough: each its need, and the spare in proportion.
    assert search_share(100.0, ["sipgw", "kamailio-1w"], needs, first) == pytest.approx(40.0)
    assert search_share(100.0, ["kamailio-1w", "sipgw"], needs, first) == pytest.approx(60.0)
    # Short: sipgw keeps its need, the Kamailio turns share what is left after it.
    order = ["sipgw", "kamailio-1w", "kamailio-2w", "sipgw"]
    assert search_share(60.0, order, needs, first) == 20.0
    assert search_share(60.0, order[1:], needs, first) == pytest.approx(20.0)  # (60-20)/2
    assert search_share(10.0, order[1:], needs, first) == 0.0
    assert search_share(-5.0, ["sipgw"], needs, first) == 0.0


# -- the result document --------------------------------------------------------------------


def _impl(label: str, impl: str, workers: int, max_rates: list[int]) -> dict[str, Any]:
    reps = []
    for i, top in enumerate(max_rates):
        steps = []
        for rate in (100, 200, 300, 400):
            s = judge(step(rate, failed=0 if rate <= top else 50), Criteria())
            s.cpu_s = rate * 4 * (0.001 if impl == "sipgw" else 0.0002)
            steps.append(s.to_json())
            if not s.clean:
                break
        reps.append(
            {"repetition": i, "max_clean_rate": top, "steps": steps, "idle_cores": 0.01,
             "log": {"warnings": 1, "errors": 0, "top": []}}
        )  # fmt: skip
    return {
        "label": label, "implementation": impl, "workers": workers, "notes": "",
        "repetitions": reps,
        "sustained": {"rate": max_rates[0], "clean": False, "steps": [
            judge(step(max_rates[0], failed=40, duration=40), Criteria()).to_json()]},
    }  # fmt: skip


def _doc() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "scenario": "proxied-calls",
        "title": "Proxied calls/s",
        "unit": "calls/s",
        "quick": False,
        "started_at": "2026-11-22T05:00:00+00:00",
        "wall_time_s": 1.0,
        "machine": {"cores": 2, "cpu_model": "X", "memory_kib": 1 << 20, "kernel": "6",
                    "loadavg_at_start": ["0.1", "0.2", "0.3"]},
        "versions": {"python": "3.11"},
        "method": {"rates": [100, 200, 300, 400]},
        "implementations": [
            _impl("sipgw", "sipgw", 1, [200, 300, 200]),
            _impl("kamailio-1w", "kamailio", 1, [400, 400, 300]),
        ],
    }  # fmt: skip


def test_summary_medians_common_rate_and_ratios() -> None:
    doc = report.summarize(_doc())
    summary = doc["summary"]
    # 200/s is clean in every repetition of both; 300/s is not (sipgw's 1st and 3rd).
    assert summary["common_rate"] == 200 and summary["common_rate_clean_everywhere"]
    sipgw, kam = summary["rows"]
    assert sipgw["max_clean_rate"] == {"median": 200, "min": 200, "max": 300}
    assert sipgw["max_clean_rates"] == [200, 300, 200]
    assert kam["max_clean_rate"]["median"] == 400
    assert sipgw["cpu_ms_per_call_at_common_rate"] == pytest.approx(1.0)
    assert kam["cpu_ms_per_call_at_common_rate"] == pytest.approx(0.2)
    assert sipgw["cpu_ms_per_call_net_at_common_rate"] == pytest.approx(0.95)  # 0.01 x 4 s
    assert sipgw["sustained"]["clean"] is False and sipgw["sustained"]["rate"] == 200
    assert sipgw["log_warnings"] == 3
    assert summary["ratios"] == [
        {"label": "sipgw", "reference": "kamailio-1w", "max_clean_rate": 0.5,
         "cpu_ms_per_call": 5.0, "max_clean_rate_bound": None}
    ]  # fmt: skip
    json.dumps(doc)  # the whole document stays JSON


def test_a_search_without_unclean_steps_is_a_lower_bound() -> None:
    doc = _doc()
    doc["implementations"][1] = _impl("kamailio-1w", "kamailio", 1, [400, 400, 400])
    doc = report.summarize(doc)
    sipgw, kam = doc["summary"]["rows"]
    assert kam["max_clean_is_lower_bound"] and not sipgw["max_clean_is_lower_bound"]
    assert "| kamailio-1w | 1 | ≥ 400 [400-400] (n=3) |" in report.headline_table(doc)


def test_common_rate_falls_back_to_the_lowest_rate() -> None:
    doc = _doc()
    doc["implementations"][0] = _impl("sipgw", "sipgw", 1, [0])
    rate, clean = report.common_rate(doc)
    assert (rate, clean) == (100, False)


def test_headline_table_and_markdown(tmp_path: Path) -> None:
    raw = _doc()
    raw["implementations"][0]["repetitions"][1].update(exit_code=-9, stop_s=25.1)
    for rep in raw["implementations"][0]["repetitions"]:
        rep["steps"][1]["aux_cpu_s"] = 0.08  # at 200/s: 800 calls
    doc = report.summarize(raw)
    table = report.headline_table(doc)
    assert "| sipgw | 1 | 200 [200-300] (n=3) | UNCLEAN @ 200 (40 s)" in table
    assert "| kamailio-1w | 1 | 400 [300-400] (n=3) |" in table
    assert "| 1.000 (+0.100 redis) |" in table  # 0.08 s / 800 calls
    assert "sipgw / kamailio-1w: max clean rate x 0.50, CPU per call x 5.00" in table
    md = report.markdown([doc], {"proxied-calls": [tmp_path / "x-rate.png"]})
    assert md.startswith("# sipgw benchmark")
    assert "![x-rate](x-rate.png)" in md
    assert "- sipgw did not exit after SIGTERM in 1 of 1 runs (killed; slowest stop 25.1 s)" in md


def test_plots_are_written(tmp_path: Path) -> None:
    doc = report.summarize(_doc())
    paths = report.plot(doc, tmp_path / "run-proxied-calls")
    assert [p.name for p in paths] == [
        "run-proxied-calls-rate.png", "run-proxied-calls-cpu.png", "run-proxied-calls-latency.png",
    ]  # fmt: skip
    assert all(p.stat().st_size > 1000 for p in paths)


def _four() -> dict[str, Any]:
    """sipgw, sipgw-2w and both Kamailio configurations; sipgw-2w's runs carry the
    workers' counters (/metrics at the end of each turn)."""
    doc = _doc()
    two = _impl("sipgw-2w", "sipgw", 2, [300, 400, 300])
    for i, rep in enumerate([*two["repetitions"], two["sustained"]]):
        rep["counters"] = {
            "worker_requests": {"0": 480.0 + i, "1": 520.0 - i},
            "worker_request_shares": {"0": 0.46 + i / 50, "1": 0.54 - i / 50},
            "workers_up": {"0": 1.0, "1": 1.0},
            "transport_events": {"relayed_to_worker": 2.0} if i == 0 else {},
        }
    two["sustained"]["exit_code"] = -14  # SIGALRM: see bench/README.md
    doc["implementations"] = [
        doc["implementations"][0], two, doc["implementations"][1],
        _impl("kamailio-2w", "kamailio", 2, [400, 400, 400]),
    ]  # fmt: skip
    return doc


def test_ratios_pair_sipgw_with_every_kamailio_and_the_workers_with_their_own() -> None:
    doc = report.summarize(_four())
    pairs = [(r["label"], r["reference"]) for r in doc["summary"]["ratios"]]
    assert pairs == [
        ("sipgw", "kamailio-1w"), ("sipgw", "kamailio-2w"),
        ("sipgw-2w", "kamailio-2w"), ("sipgw-2w", "sipgw"),
    ]  # fmt: skip
    by_pair = {(r["label"], r["reference"]): r for r in doc["summary"]["ratios"]}
    # kamailio-2w met no unclean step: its 400 is a lower bound, the ratio an upper one.
    assert by_pair["sipgw-2w", "kamailio-2w"]["max_clean_rate"] == 0.75
    assert by_pair["sipgw-2w", "kamailio-2w"]["max_clean_rate_bound"] == "upper"
    assert by_pair["sipgw-2w", "sipgw"]["max_clean_rate"] == 1.5
    assert by_pair["sipgw-2w", "sipgw"]["max_clean_rate_bound"] is None
    table = report.headline_table(doc)
    assert "- sipgw-2w / kamailio-2w: max clean rate x ≤ 0.75, CPU per call x" in table
    assert "- sipgw-2w / sipgw: max clean rate x 1.50, CPU per call x 1.00" in table


def test_the_workers_spread_and_a_signal_at_exit_are_reported(tmp_path: Path) -> None:
    doc = report.summarize(_four())
    two = doc["summary"]["rows"][1]
    assert two["worker_request_shares"] == {"0": pytest.approx(0.49), "1": pytest.approx(0.51)}
    assert two["worker_requests_total"] == 4000 and two["transport_events"] == {
        "relayed_to_worker": 2.0
    }
    assert "worker_request_shares" not in doc["summary"]["rows"][0]  # one process
    md = report.markdown([{**doc, "method": {**doc["method"], "transport": "UDP, -t un"}}], {})
    assert "Transport: UDP, -t un." in md
    assert (
        "- sipgw-2w: SIP requests per worker (median over the runs): worker 0 49.0%, "
        "worker 1 51.0%; handed to another worker: 2 of 4000"
    ) in md
    assert (
        "- sipgw-2w ended on a signal (SIGALRM) after SIGTERM in 1 of 1 runs, not killed "
        "by the harness"
    ) in md
    assert "did not exit after SIGTERM" not in md
