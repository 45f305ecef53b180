"""The per-partition state of the monitor app: the score–label join, maturity, duplicates, window closing, and
recovery from any prefix of the changelog (a crash anywhere) to exactly the state of an uninterrupted run."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest

from monitor.ab import ABCounts, Outcome, outcome
from monitor.partition import (
    EXPIRY_GUARD,
    Clocks,
    PartitionState,
    Policy,
    Record,
    TopicKind,
    WindowBody,
    add_sparse,
    key_partition,
    merge_state,
    pack,
    unpack,
)
from monitor.references import ReferenceBook, score_series
from monitor.settings import MonitorSettings
from streamscore.contracts import Label, Score
from tests.support.monitoring import (
    draw_features,
    label_event,
    model_scores,
    score_event,
    two_versions,
)

T0 = 1_900_000_000.0
STATS = MonitorSettings(
    window_seconds=10.0,
    min_window_events=20,
    label_maturity_s=5.0,
    expected_split={"champion": 0.5, "challenger": 0.5},
)
CUTS = 12
POLICY = Policy(partitions=6, allowed_lateness_s=1.0, unit_retention_s=20.0)


@pytest.fixture(scope="module")
def book() -> ReferenceBook:
    return two_versions(7, sample_seed=1, strength=2.0, categorical=STATS.categorical_features)


def fresh(book: ReferenceBook, stats: MonitorSettings = STATS, policy: Policy = POLICY) -> PartitionState:
    return PartitionState(0, stats, policy, book)


def clocks(now: float, caught_up: bool = False) -> Clocks:
    return Clocks(now=now, scores_caught_up=caught_up, labels_caught_up=caught_up)


# --- the join, maturity, duplicates ----------------------------------------------------------------------------


def test_a_unit_counts_once_its_maturity_passed_on_the_label_clock_with_the_label_that_arrived(
    book: ReferenceBook,
) -> None:
    state = fresh(book)
    fraud = score_event("e1", "a1", T0, 0.9)
    legit = score_event("e2", "a2", T0 + 1, 0.1, variant="challenger")
    hidden = score_event("e3", "a3", T0 + 2, 0.95, variant="challenger")
    for offset, s in enumerate((fraud, legit, hidden)):
        assert state.on_score(s, "scores", offset, T0)[0] == "counted"
    assert state.on_label(label_event("e1", "a1", T0, True, 1.0), 0) == "joined"
    state.checkpoint(clocks(T0))
    assert state.counts == {}, "nothing is mature before the label clock passed event time + maturity"

    # The label clock follows the labels read: a label labeled 6 s after e3 matures e1..e3 (maturity 5 s).
    state.on_label(label_event("other", "a9", T0 + 2, False, 6.0), 1)
    state.checkpoint(clocks(T0))
    expected = ABCounts()
    expected.add(outcome(fraud, label_event("e1", "a1", T0, True, 1.0)))
    expected.add(outcome(legit, None))
    expected.add(outcome(hidden, None))
    assert state.counts["exp-1"].to_dict() == expected.to_dict()
    assert state.counts["exp-1"].variants["challenger"].hidden == 1, "declined without a label: hidden"

    # A label arriving after its unit was counted does not change the counts.
    assert state.on_label(label_event("e2", "a2", T0 + 1, True, 9.0), 2) == "joined"
    state.checkpoint(clocks(T0))
    assert state.counts["exp-1"].to_dict() == expected.to_dict()
    # Accounts count in the sample-ratio check once their first score is behind the score clock − lateness (1 s):
    # the newest part of the stream may still miss the other variant's scores of the same scorer batch.
    assert state.account_counts["exp-1"] == {"champion": 1, "challenger": 1}
    state.checkpoint(clocks(T0 + 10, caught_up=True))
    assert state.account_counts["exp-1"] == {"champion": 1, "challenger": 2}


def test_a_duplicate_from_another_offset_changes_nothing_a_replay_applies_only_what_is_missing(
    book: ReferenceBook,
) -> None:
    state = fresh(book)
    s = score_event("e1", "a1", T0, 0.9, features=draw_features(np.random.default_rng(1), 1)[0])
    assert state.on_score(s, "scores", 10, T0) == ("counted", None)
    assert state.on_score(s, "scores", 11, T0) == ("duplicate", None)
    assert state.on_score(s, "scores", 10, T0) == ("replayed", None)
    assert state.on_label(label_event("e1", "a1", T0, True, 1.0), 3) == "joined"
    assert state.on_label(label_event("e1", "a1", T0, True, 1.0), 4) == "duplicate"
    window = state.windows[int(T0 // 10)]
    assert window.features is not None
    window.flush()  # the champion's features are buffered and added when the state is read
    assert window.features.events("amount_log") == 1, "delivered again before a checkpoint: added once"

    stored = dict(state.checkpoint(clocks(T0)))
    assert state.on_score(s, "scores", 10, T0) == ("replayed", None)
    window.flush()
    assert window.features.events("amount_log") == 1, "checkpointed state holds offset 10: not added again"
    restored = fresh(book)
    restored.restore(stored.items())
    assert restored.on_score(s, "scores", 10, T0) == ("replayed", None)
    assert restored.on_score(score_event("e2", "a1", T0, 0.9), "scores", 12, T0) == ("counted", None)
    again = restored.windows[int(T0 // 10)]
    again.flush()
    assert again.features is not None and again.features.events("amount_log") == 1, "a replay after a restore"


def test_api_scores_are_ignored_unless_configured(book: ReferenceBook) -> None:
    state = fresh(book)
    s = score_event("e1", "a1", T0, 0.2, source="api")
    assert state.on_score(s, "scores", 0, T0) == ("ignored", None)
    assert not state.units and not state.windows
    counting = fresh(book, policy=Policy(partitions=6, include_api_scores=True))
    assert counting.on_score(s, "scores", 0, T0)[0] == "counted"


def test_a_version_without_a_reference_counts_for_ab_but_not_for_drift(book: ReferenceBook) -> None:
    state = fresh(book)
    outcome_, note = state.on_score(score_event("e1", "a1", T0, 0.2, version="9"), "scores", 0, T0)
    assert (outcome_, note) == ("counted", "no_reference")
    assert "e1" in state.units


# --- windows ---------------------------------------------------------------------------------------------------


def test_windows_close_on_the_partition_clock_and_a_late_score_is_left_out(book: ReferenceBook) -> None:
    state = fresh(book)
    rng = np.random.default_rng(3)
    for i in range(30):
        state.on_score(
            score_event(f"e{i}", "a1", T0 + i * 0.5, 0.2, features=draw_features(rng, 1)[0]), "scores", i, T0
        )
    first = int(T0 // 10)
    state.checkpoint(clocks(T0))
    # clock = T0 + 14.5; window `first` ends at its start + 10, + 1 s lateness: due.
    assert state.due_windows() == [first]
    partial = state.partial(first)
    body = WindowBody.from_json(partial)
    assert body.features_version == "1"
    assert set(body.scores) == {score_series("champion", "1")}
    writes = state.close([first])
    assert writes[0][0] == "0/meta" and writes[-1] == (f"0/w/{first}", None)
    assert state.progress() == {"type": "progress", "p": 0, "n": 6, "below": first + 1}
    outcome_, note = state.on_score(score_event("late", "a1", T0 + 1, 0.2), "scores", 99, T0)
    assert (outcome_, note) == ("counted", "late")


def test_a_caught_up_partition_follows_the_wall_clock_unless_told_to_close_on_event_time_alone(
    book: ReferenceBook,
) -> None:
    """Live traffic: a quiet, caught-up partition closes its windows as the wall clock passes them. A replay of past
    traffic (MONITOR_WALL_CLOCK=false): only event time closes windows, so a past window's scores are not late."""
    week_ago = T0 - 7 * 86400
    live, replay = fresh(book), fresh(book, policy=Policy(partitions=6, allowed_lateness_s=1.0, wall_clock=False))
    for state in (live, replay):
        state.on_score(score_event("e0", "a1", week_ago, 0.2), "scores", 0, T0)
        state.checkpoint(clocks(T0, caught_up=True))
    first = int(week_ago // 10)
    assert live.due_windows() == [first], "the wall clock passed the window long ago"
    assert replay.due_windows() == [], "event time has not passed the window's end"
    live.close(live.due_windows())
    assert live.on_score(score_event("e1", "a1", week_ago + 1, 0.2), "scores", 1, T0)[1] == "late"
    assert replay.on_score(score_event("e1", "a1", week_ago + 1, 0.2), "scores", 1, T0)[1] is None


def test_on_a_simulated_clock_a_caught_up_partition_runs_on_from_its_newest_record_at_the_clock_speed(
    book: ReferenceBook,
) -> None:
    """The demo plays the world's hours in a minute, hours behind the wall clock (MONITOR_CLOCK_SPEED=750): jumping to
    the wall clock would make every later score late; standing still would never close the last window."""
    hours_ago = T0 - 12 * 3600
    sim = fresh(book, policy=Policy(partitions=6, allowed_lateness_s=1.0, clock_speed=100.0))
    sim.on_score(score_event("e0", "a1", hours_ago, 0.2), "scores", 0, T0)
    sim.checkpoint(clocks(T0, caught_up=True))
    first = int(hours_ago // 10)
    assert sim.due_windows() == [], "the clock stands at the newest record"
    assert sim.score_clock == hours_ago
    sim.checkpoint(clocks(T0 + 0.05, caught_up=True))
    assert sim.score_clock == pytest.approx(hours_ago + 5.0), "0.05 wall seconds at 100x"
    sim.checkpoint(clocks(T0 + 0.2, caught_up=True))
    assert sim.due_windows() == [first], "20 simulated seconds later the window is past its end and lateness"
    assert sim.score_clock < T0 - 11 * 3600, "nowhere near the wall clock"
    # A record that moves the clock on re-anchors it there.
    sim.on_score(score_event("e1", "a1", hours_ago + 100, 0.2), "scores", 1, T0)
    sim.checkpoint(clocks(T0 + 0.3, caught_up=True))
    assert sim.score_clock == hours_ago + 100
    sim.checkpoint(clocks(T0 + 0.31, caught_up=True))
    assert sim.score_clock == pytest.approx(hours_ago + 101)


def test_a_score_topic_read_ahead_does_not_close_a_window_the_other_still_feeds(book: ReferenceBook) -> None:
    """`scores` and `scores.shadow` of a partition are consumed independently: live scores of the next window can be
    read while shadow scores of this one are still unread. The window waits for the topic that is behind."""
    state = fresh(book)
    first = int(T0 // 10)
    for i in range(10):
        state.on_score(score_event(f"e{i}", "a1", T0 + i, 0.2), "scores", i, T0)
    state.on_score(score_event("e2", "a1", T0 + 2, 0.2, variant="shadow"), "shadow", 0, T0)
    state.on_score(score_event("next", "a1", T0 + 25, 0.2), "scores", 10, T0)
    state.checkpoint(Clocks(now=T0, scores_caught_up=False, labels_caught_up=False, behind=frozenset({"shadow"})))
    assert state.due_windows() == [], "the shadow topic has unread records and has only reached T0 + 2"
    late_shadow = score_event("e8", "a1", T0 + 8, 0.2, variant="shadow")
    assert state.on_score(late_shadow, "shadow", 1, T0) == ("counted", None), "still in its open window"
    state.checkpoint(Clocks(now=T0, scores_caught_up=True, labels_caught_up=False))
    assert state.due_windows() == [first], "both topics read: the newest score time decides"
    assert state.windows[first].scores[score_series("shadow", "1")][2].events(score_series("shadow", "1")) == 2

    # Without the hold, the live topic alone would have closed the window and the shadow score would be late.
    ahead = fresh(book)
    ahead.on_score(score_event("next", "a1", T0 + 25, 0.2), "scores", 0, T0)
    ahead.checkpoint(clocks(T0))
    ahead.close(ahead.due_windows())
    assert ahead.on_score(late_shadow, "shadow", 0, T0) == ("counted", "late")


def test_count_windows_close_when_full_or_after_a_quiet_spell(book: ReferenceBook) -> None:
    stats = STATS.model_copy(update={"window": "events", "window_events": 60})  # 10 per partition of 6
    state = fresh(book, stats, Policy(partitions=6, idle_close_s=5.0))
    assert state.events_per_window == 10
    for i in range(25):
        state.on_score(score_event(f"e{i}", "a1", T0 + i, 0.2), "scores", i, T0)
    state.checkpoint(clocks(T0))
    assert state.due_windows() == [0, 1]
    state.close([0, 1])
    assert sorted(state.windows) == [2]
    state.checkpoint(clocks(T0 + 1, caught_up=True))
    assert state.due_windows() == [], "quiet for 1 s only"
    state.checkpoint(clocks(T0 + 6, caught_up=True))
    assert state.due_windows() == [2]
    state.close([2])
    state.on_score(score_event("next", "a1", T0 + 30, 0.2), "scores", 30, T0 + 7)
    assert sorted(state.windows) == [3], "after an early close the next score opens the next window"


# --- codecs ----------------------------------------------------------------------------------------------------


def test_pack_and_sparse_merge() -> None:
    body = {"a": [1, 2, 3], "b": None}
    assert unpack(pack(body)) == body
    assert add_sparse([[0, 3], [1, 2]], [[3, 5], [4, 1]]) == [[0, 3, 5], [1, 6, 1]]
    a = {"key": 1, "series": ["x"], "bins": [[[0], [1]]], "cells": [[[2], [1]]], "missing": [0],
         "first_event_time": 5.0, "last_event_time": 6.0}  # fmt: skip
    b = {**a, "missing": [2], "first_event_time": None, "last_event_time": None}
    merged = merge_state(a, b)
    assert merged["bins"] == [[[0], [2]]] and merged["missing"] == [2] and merged["first_event_time"] == 5.0
    assert key_partition("3/u/e1") == 3 and key_partition("other") is None


# --- a crash anywhere ------------------------------------------------------------------------------------------


@dataclass
class In:
    kind: TopicKind
    offset: int
    event: Score | Label
    at: float


def traffic(seed: int, events: int = 360) -> list[In]:
    """One partition's records in arrival order: live scores (champion / challenger by account), a 30 % shadow,
    labels 1–4 s after the event, re-sent scores and labels (duplicates at new offsets), a late score."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    x = draw_features(nrng, events)
    arrivals: list[tuple[float, int, TopicKind, Score | Label]] = []
    for i in range(events):
        t = T0 + i * 0.1
        account = f"a{rng.randrange(40)}"
        variant = "champion" if int(account[1:]) % 2 else "challenger"
        value = float(model_scores(x[i : i + 1])[0]) if rng.random() < 0.8 else rng.random()
        live = score_event(f"e{i}", account, t, value, variant=variant, features=x[i], amount=10.0 + i)
        arrivals.append((t + 0.01, len(arrivals), "scores", live))
        if rng.random() < 0.3:
            arrivals.append(
                (
                    t + 0.05,
                    len(arrivals),
                    "shadow",
                    score_event(f"e{i}", account, t, value, variant="shadow", version="2"),
                )
            )
        fraud = rng.random() < 0.2
        arrivals.append(
            (t + rng.uniform(1.0, 4.0), len(arrivals), "labels", label_event(f"e{i}", account, t, fraud, 1.0))
        )
        if rng.random() < 0.03:
            arrivals.append((t + rng.uniform(0.1, 2.0), len(arrivals), "scores", live))
        if rng.random() < 0.01:
            arrivals.append((t + 4.5, len(arrivals), "labels", label_event(f"e{i}", account, t, fraud, 1.0)))
    arrivals.append((T0 + 20.0, len(arrivals), "scores", score_event("late", "a1", T0 + 1.0, 0.5)))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    offsets: dict[str, int] = {}
    out = []
    for at, _, kind, event in arrivals:
        offsets[kind] = offsets.get(kind, -1) + 1
        out.append(In(kind, offsets[kind], event, at))
    return out


@dataclass
class Run:
    """A partition state driven through `records` with a checkpoint every `every` records; what it wrote to the
    changelog and what it sent to the merging agent, in the order it happened."""

    state: PartitionState
    records: list[In]
    every: int = 17
    log: list[tuple[str, Any]] = field(default_factory=list)
    boundaries: dict[int, int] = field(default_factory=dict)
    """Records consumed → length of the log after that checkpoint (offsets may be committed up to there)."""

    def feed(self, r: In) -> None:
        if isinstance(r.event, Label):
            self.state.on_label(r.event, r.offset)
        else:
            self.state.on_score(r.event, r.kind, r.offset, r.at)

    def checkpoint(self, now: float, caught_up: bool = False) -> None:
        self.log += [("write", w) for w in self.state.checkpoint(clocks(now, caught_up))]
        scanned = sum(1 for u in self.state.units.values() if any(not e.counted for e in u.variants.values()))
        assert self.state.pending_units == scanned, "the pending count kept as units change equals a scan"
        due = self.state.due_windows()
        self.log += [("send", self.state.partial(key)) for key in due]
        self.log += [("write", w) for w in self.state.close(due)]
        self.log += [("send", self.state.progress())]
        self.log += [("send", m) for m in self.state.ab_messages()]

    def go(self, start: int = 0, stop: int | None = None) -> None:
        for i in range(start, len(self.records) if stop is None else stop):
            self.feed(self.records[i])
            if (i + 1) % self.every == 0:
                self.checkpoint(self.records[i].at)
                self.boundaries[i + 1] = len(self.log)

    def finish(self) -> None:
        for k in range(8):
            self.checkpoint(T0 + 1000.0 + k, caught_up=True)
            self.boundaries[len(self.records) + k] = len(self.log)


def image(log: list[tuple[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for what, item in log:
        if what == "write":
            key, value = item
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    return table


def sent(log: list[tuple[str, Any]]) -> Iterator[dict[str, Any]]:
    return (item for what, item in log if what == "send" and item is not None)


def outcome_of(run: Run) -> dict[str, Any]:
    """What the merging agent ends up with: first partial per window wins, latest A/B counts."""
    windows: dict[int, Any] = {}
    ab: dict[str, Any] = {}
    for m in sent(run.log):
        if m["type"] == "window":
            windows.setdefault(m["w"], WindowBody.from_json(m))
        elif m["type"] == "ab":
            ab[m["x"]] = (m["counts"], m["accounts"])
    return {"windows": windows, "ab": ab}


def same_windows(a: dict[int, WindowBody], b: dict[int, WindowBody]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].features_version == b[key].features_version
        assert json.dumps(a[key].features, sort_keys=True) == json.dumps(b[key].features, sort_keys=True)
        assert json.dumps(a[key].scores, sort_keys=True) == json.dumps(b[key].scores, sort_keys=True)


@pytest.mark.parametrize("seed", range(6))
def test_recovery_from_any_prefix_of_the_changelog_gives_the_uninterrupted_result(
    book: ReferenceBook, seed: int
) -> None:
    recovers_from_any_prefix(book, seed, POLICY)


@pytest.mark.parametrize("seed", range(3))
def test_recovery_from_any_prefix_is_exact_while_the_account_sample_raises_its_level(
    book: ReferenceBook, seed: int
) -> None:
    # 40 accounts, at most 9 kept: the sample's level rises during the traffic and accounts leave it.
    policy = replace(POLICY, srm_accounts=9)
    reference = Run(fresh(book, policy=policy), traffic(seed))
    reference.go()
    reference.finish()
    sample = reference.state.accounts["exp-1"]
    assert sample.level >= 2 and 0 < len(sample) <= 9
    table = image(reference.log)
    stored = {key.rsplit("/", 1)[1] for key in table if key.startswith("0/a/exp-1/")}
    assert stored == set(sample.accounts), "the changelog holds the sample and nothing that left it"
    assert table["0/l/exp-1"] == sample.level
    counted = {name: sum(e.variant == name for e in sample.accounts.values()) for name in ("champion", "challenger")}
    assert dict(reference.state.account_counts["exp-1"]) == counted
    recovers_from_any_prefix(book, seed, policy)


def recovers_from_any_prefix(book: ReferenceBook, seed: int, policy: Policy) -> None:
    records = traffic(seed)
    reference = Run(fresh(book, policy=policy), records)
    reference.go()
    reference.finish()
    expected = outcome_of(reference)
    matured = {name: c.units for name, c in reference.state.counts["exp-1"].variants.items()}
    distinct: dict[str, set[str]] = {}
    for r in records:
        if isinstance(r.event, Score):
            distinct.setdefault(r.event.variant, set()).add(r.event.event_id)
    assert matured == {variant: len(ids) for variant, ids in distinct.items()}, "every unit once, duplicates not"
    assert len(expected["windows"]) >= 3

    rng = random.Random(seed)
    for _ in range(CUTS):
        cut = rng.randrange(len(reference.log) + 1)
        # Offsets are committed up to a checkpoint whose records reached the log, a few checkpoints behind at most
        # (Faust commits every second; units stay EXPIRY_GUARD checkpoints after their last write).
        committed = sorted(pos for pos, end in reference.boundaries.items() if end <= cut)[-4:] or [0]
        start = min(rng.choice(committed), len(records))
        restored = fresh(book, policy=policy)
        deletions = restored.restore(image(reference.log[:cut]).items())
        again = Run(restored, records, log=reference.log[:cut] + [("write", d) for d in deletions])
        again.go(start)
        again.finish()
        got = outcome_of(again)
        same_windows(got["windows"], expected["windows"])
        # A window sent twice (before and after the crash) must carry the same state both times.
        for m in sent(again.log):
            if m["type"] == "window":
                same_windows({m["w"]: WindowBody.from_json(m)}, {m["w"]: expected["windows"][m["w"]]})
        assert got["ab"] == expected["ab"], f"cut {cut}/{len(reference.log)}, replay from record {start}"
        assert restored.counts["exp-1"].to_dict() == reference.state.counts["exp-1"].to_dict()


def test_counted_units_expire_after_the_retention(book: ReferenceBook) -> None:
    state = fresh(book)
    state.on_score(score_event("e1", "a1", T0, 0.1), "scores", 0, T0)
    state.on_label(label_event("e1", "a1", T0, False, 1.0), 0)
    writes: list[Record] = state.checkpoint(clocks(T0 + 6, caught_up=True))
    assert state.counts["exp-1"].variants["champion"].units == 1
    assert "e1" in state.units
    for _ in range(EXPIRY_GUARD - 1):
        writes = state.checkpoint(clocks(T0 + 26, caught_up=True))
        assert "e1" in state.units, "written too recently: a replay could still re-read its records"
    writes = state.checkpoint(clocks(T0 + 26, caught_up=True))
    assert ("0/u/e1", None) in writes and "e1" not in state.units
    assert Outcome("champion", False, False, 25.0) == outcome(score_event("e1", "a1", T0, 0.1), None)


def test_an_accounts_units_form_one_cluster_that_expires_after_the_retention(book: ReferenceBook) -> None:
    state = fresh(book)
    for i in range(3):
        state.on_score(score_event(f"e{i}", "a1", T0 + i, 0.9 if i else 0.1), "scores", i, T0)
        state.on_label(label_event(f"e{i}", "a1", T0 + i, True, 1.0), i)
    state.on_score(score_event("e3", "a2", T0, 0.1), "scores", 3, T0)
    writes = dict(state.checkpoint(clocks(T0 + 10, caught_up=True)))
    champion = state.counts["exp-1"].variants["champion"]
    # a1: 3 units, 2 caught; a2: 1 unit, 0 caught.
    assert champion.cluster_sums("fraud_caught") == (2, 4, 2, 9 + 1, 4, 6)
    assert writes["0/c/exp-1/a1"]["s"] == {"champion": [3, 2, 1, 0, 2]}
    assert writes["0/c/exp-1/a1"]["p"] == {}, "the sums the A/B counts held before this checkpoint"
    for _ in range(EXPIRY_GUARD):
        writes = dict(state.checkpoint(clocks(T0 + 40, caught_up=True)))
    assert writes.get("0/c/exp-1/a1", "kept") is None and "a1" not in state.clusters["exp-1"]
    # A unit of the account after that starts a new cluster; what the old one added stays in the counts.
    state.on_score(score_event("e9", "a1", T0 + 41, 0.1), "scores", 9, T0 + 41)
    state.checkpoint(clocks(T0 + 60, caught_up=True))
    assert champion.cluster_sums("fraud_caught")[:4] == (3, 5, 2, 11)
