"""The pure helpers of the processors' phases of the pipeline benchmark (bench._processors): percentiles with
unseen events, drain windows from committed offsets, the freshness join, /proc and stamp parsing, lag summaries."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from bench._data import Record
from bench._processors import (
    CONSUMED,
    FEATURES,
    MONITOR,
    PROFILE_STEPS,
    DrainWindow,
    StampedEvent,
    drain_window,
    freshness_ms,
    lag_summary,
    last_event_us,
    metric_total,
    parse_stamps,
    parse_status,
    percentiles,
    profile_steps,
    record_memory,
    sample_accounts,
    steady_rates,
)


def test_percentiles_match_numpy_on_seen_values() -> None:
    rng = np.random.default_rng(3)
    values = rng.exponential(40.0, 5_000)
    out = percentiles(values.tolist())
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        assert out[name] == pytest.approx(float(np.percentile(values, q, method="higher")), abs=0.01)
    assert out["max"] == pytest.approx(values.max(), abs=0.01)


def test_unseen_events_count_as_longer_than_the_window() -> None:
    seen = [10.0] * 98
    out = percentiles(seen, unresolved=2)
    assert out["p50"] == 10.0
    assert out["p99"] is None  # the 99th of 100 is an event never seen: no number is made up
    assert out["max"] is None
    assert percentiles([], 0)["p50"] is None


def test_drain_window_runs_from_the_first_commit_to_the_end() -> None:
    samples = [(0.0, 0), (1.0, 0), (2.0, 100), (3.0, 600), (4.0, 1_000), (5.0, 1_000)]
    assert drain_window(samples, 1_000) == DrainWindow(2.0, 4.0, 900)
    window = drain_window(samples, 1_000)
    assert window is not None and window.offsets / window.seconds == 450.0


def test_drain_window_tolerates_commit_markers_and_refuses_no_window() -> None:
    samples = [(0.0, 0), (1.0, 50), (2.0, 994)]
    assert drain_window(samples, 1_000, slack=6) == DrainWindow(1.0, 2.0, 944)
    assert drain_window(samples, 1_000) is None  # never reached the end
    assert drain_window([(0.0, 0), (1.0, 1_000)], 1_000) is None  # all at once: no window


def test_parse_status_reads_rss_and_peak() -> None:
    text = "Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  524288 kB\nVmRSS:\t  262144 kB\nThreads:\t4\n"
    assert parse_status(text) == {"VmHWM": 524288, "VmRSS": 262144}


def test_record_memory_keeps_the_largest_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench._processors as module

    readings = iter([{"VmHWM": 2048, "VmRSS": 1024}, {"VmHWM": 1024, "VmRSS": 512}])
    monkeypatch.setattr(module, "process_memory_kib", lambda pid: next(readings))
    memory: dict[str, dict[str, float]] = {}
    record_memory(memory, "features", 1)
    record_memory(memory, "features", 2)
    assert memory == {"features": {"peak_rss_mib": 2.0, "end_rss_mib": 0.5}}


def test_parse_stamps() -> None:
    text = "e1\t1000\tacc-1\t5000000\ne2\t1010\tacc-2\t5000100\nold\t1\n"
    assert parse_stamps(text) == [
        StampedEvent("e1", 1000, "acc-1", 5_000_000),
        StampedEvent("e2", 1010, "acc-2", 5_000_100),
    ]


def test_last_event_us_reads_a_feast_double() -> None:
    assert last_event_us(bytes([0x29]) + struct.pack("<d", 1_700_000_000.25)) == 1_700_000_000_250_000
    assert last_event_us(None) is None
    assert last_event_us(b"\x20\x05") is None  # an int64 Value, not a double
    assert last_event_us(bytes([0x29]) + struct.pack("<d", math.nan)) is None


def test_freshness_is_the_first_snapshot_holding_the_event() -> None:
    events = [
        StampedEvent("a1", 1_000, "a", 10_000_000),
        StampedEvent("a2", 1_100, "a", 11_000_000),
        StampedEvent("b1", 1_000, "b", 10_000_000),
        StampedEvent("c1", 1_000, "c", 10_000_000),  # account not observed: not a sample
    ]
    observations = {
        "a": [(1.050, 10_000_000), (1.300, 11_000_000)],
        "b": [(1.020, 9_000_000)],  # never reached b1
    }
    values, unseen = freshness_ms(events, observations)
    assert values == pytest.approx([50.0, 200.0])
    assert unseen == 1


def test_freshness_counts_a_later_snapshot_as_holding_earlier_events() -> None:
    # The probe may miss an intermediate snapshot: the next one, newer, holds the earlier event too.
    events = [StampedEvent("a1", 1_000, "a", 10_000_000), StampedEvent("a2", 1_010, "a", 10_500_000)]
    values, unseen = freshness_ms(events, {"a": [(1.200, 10_500_000)]})
    assert values == pytest.approx([200.0, 190.0]) and unseen == 0


def test_lag_summary() -> None:
    samples = [(0.0, 10), (1.0, 500), (2.0, 300), (3.0, 40), (4.0, 5), (5.0, 0)]
    summary = lag_summary(samples, load_end=2.5, settled=6)
    assert (summary.max_offsets, summary.end_offsets, summary.catch_up_s) == (500, 300, 1.5)
    assert lag_summary([(0.0, 2), (1.0, 3)], load_end=1.0, settled=6).catch_up_s == 0.0
    assert lag_summary([(0.0, 900), (2.0, 800)], load_end=1.0).catch_up_s is None


def test_steady_rates_and_account_sample() -> None:
    assert steady_rates(8_000.0, [0.1, 0.25, 0.5]) == [800.0, 2_000.0, 4_000.0]
    records: list[Record] = [(f"acc-{i % 50}".encode(), b"", [], f"e{i}") for i in range(1_000)]
    chosen = sample_accounts(records, 10, seed=1)
    assert len(chosen) == 10 and len(set(chosen)) == 10
    assert chosen == sample_accounts(records, 10, seed=1)
    assert len(sample_accounts(records, 100, seed=1)) == 50


def test_profile_steps_sorts_stacks_into_the_first_matching_step() -> None:
    raw = "\n".join(
        [
            "run (asyncio/base_events.py:1);_on_event (agents.py:9);fold (stream_processors/accounts/agents.py:98) 30",
            "run (asyncio/base_events.py:1);push (pushing.py:120);push_realtime (feature_repo/store.py:306) 50",
            "run (asyncio/base_events.py:1);getmany (aiokafka/consumer/consumer.py:1) 15",
            "run (asyncio/base_events.py:1) 5",
            "garbage line",
        ]
    )
    shares = profile_steps(raw, PROFILE_STEPS[FEATURES])
    assert shares["push to the online store"] == 0.5
    assert shares["fold"] == 0.3
    assert shares["aiokafka: fetch, decompress, parse"] == 0.15
    assert shares["asyncio loop, other"] == 0.05
    assert sum(shares.values()) == pytest.approx(1.0)
    assert profile_steps("", PROFILE_STEPS[MONITOR]) == {}


def test_metric_total_sums_every_label_set_of_the_named_metrics() -> None:
    text = "\n".join(
        [
            "# HELP streamscore_monitor_records_total Records consumed",
            "# TYPE streamscore_monitor_records_total counter",
            'streamscore_monitor_records_total{outcome="counted",topic="scores"} 1200.0',
            'streamscore_monitor_records_total{outcome="joined",topic="labels"} 800.0',
            'streamscore_monitor_records_created{outcome="counted",topic="scores"} 1.7e+09',
            "streamscore_monitor_records_total_other 5.0",
            "streamscore_features_events_processed_total 7.0",
        ]
    )
    assert metric_total(text, CONSUMED[MONITOR]) == 2000.0
    assert metric_total(text, CONSUMED[FEATURES]) == 7.0
    assert metric_total("", CONSUMED[FEATURES]) == 0.0
