"""What the monitor keeps for one partition of `scores` / `scores.shadow` / `labels`, and how it survives a
crash: pure state and its changelog records, no Faust, no Kafka.

The three topics are keyed by account id with the same partition count, so partition p of each holds the same
accounts: one `PartitionState` owns everything of partition p.

- **Units** (A/B): one record per event id — the variants that scored it (decision, amount, experiment, the
  topic and offset of the score) and its label once it arrived. A score and its label are joined here by event
  id. A unit counts once its label maturity window has passed on the partition's *label clock* (the labeled_at
  of the newest label read, or the wall clock once every label of the partition has been read), with the label
  that had arrived by then; the counts per experiment (`ABCounts`) are sums. A unit's record is deleted
  `unit_retention_s` after maturity (the table's expiry).
- **Windows** (drift): one record per open window — a `DriftWindow` over the champion's features (the inputs
  of the events the champion scored, against the champion version's reference) and one per
  `score:<variant>@<version>`, each against the reference of the version that scored.
- **Clusters** (A/B variance): one record per (experiment, account) with the account's counted sums per variant
  (`monitor.ab.AccountSums`), written after the units and before the A/B counts with the sums of its previous
  write (`Cluster`): a record newer than the recovered A/B counts falls back to those. It expires like a unit, once
  the account's newest counted unit is `unit_retention_s` past maturity.
- **Accounts**: one record per (experiment, sampled account): the variant the account was first seen on and that
  score's event time — the randomized unit of the sample-ratio check. At most `srm_accounts` accounts per experiment
  are kept, a uniform sample of the distinct accounts by their hash (`monitor.sampling`); the sample's level has a
  record of its own, written before the deletions of the accounts that left it. An account counts in the check once
  that time is past both the A/B cutoff (label clock − maturity) and the score clock − allowed lateness: the newest
  part of the stream (a batch in flight, one score topic read ahead of the other) may hold one variant's accounts
  and not yet the other's, which a check of everything seen would read as a broken split.

Checkpoints. Nothing is written per record: every `checkpoint_interval_s` the changed records are written to the
changelog, in an order that makes recovery exact, and only then are the consumed records' offsets released for
commit. Records of one partition go to one changelog partition, so the log keeps their order, and a crash keeps
a prefix of it:

1. windows (each with the offsets of the last score and shadow records it holds: a replayed record at or below
   them is not added again),
2. units, the account samples' levels, then the accounts (a variant's entry and a label carry the sequence number
   of the checkpoint that first wrote them; an account below its recovered level is dropped at recovery),
3. the A/B counts of each experiment whose counts changed, with this checkpoint's sequence number `k` and label
   clock `L`: they hold exactly the unit variants written at a checkpoint ≤ k whose event time + maturity ≤ L —
   so after a crash a unit's "counted" flag is derived, never stored,
4. deletions of expired units and of the accounts that left a sample, then the partition's meta record (sequence,
   clocks, closed windows).

Idempotence by event id: a score whose (event id, variant) is already in a unit from another offset is a
duplicate (a re-sent or at-least-once score) and changes nothing; from the same offset it is a replay after a
restart, and only what its checkpointed state lacks is applied. A duplicate arriving after its unit expired is
not recognised.
"""

from __future__ import annotations

import base64
import heapq
import json
import math
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from monitor.ab import ABCounts, AccountSums, Outcome
from monitor.drift import DriftWindow, window_key
from monitor.references import ReferenceBook, score_series
from monitor.sampling import AccountSample, FirstSeen
from monitor.settings import MonitorSettings
from streamscore.contracts import Label, Score

TopicKind = Literal["scores", "shadow", "labels"]
CODES: dict[TopicKind, str] = {"scores": "s", "shadow": "h", "labels": "l"}

ScoreOutcome = Literal["counted", "duplicate", "replayed", "ignored"]
LabelOutcome = Literal["joined", "duplicate", "replayed"]
DriftNote = Literal["late", "no_reference", "version_changed"]

EXPIRY_GUARD = 5
"""Checkpoints a unit's record stays after its last write at least (see `PartitionState._expire`)."""

Record = tuple[str, Any]
"""(table key, JSON value), or (key, None) for a deletion."""


# --- record keys -------------------------------------------------------------------------------------------


def unit_key(partition: int, event_id: str) -> str:
    return f"{partition}/u/{event_id}"


def window_record_key(partition: int, window: int) -> str:
    return f"{partition}/w/{window}"


def ab_key(partition: int, experiment: str) -> str:
    return f"{partition}/ab/{experiment}"


def account_key(partition: int, experiment: str, account: str) -> str:
    return f"{partition}/a/{experiment}/{account}"


def level_key(partition: int, experiment: str) -> str:
    return f"{partition}/l/{experiment}"


def cluster_key(partition: int, experiment: str, account: str) -> str:
    return f"{partition}/c/{experiment}/{account}"


def meta_key(partition: int) -> str:
    return f"{partition}/meta"


def key_partition(key: str) -> int | None:
    """The partition a state record belongs to (None for a key this module did not write)."""
    head, sep, _ = key.partition("/")
    return int(head) if sep and head.isdigit() else None


# --- window state codec ------------------------------------------------------------------------------------


def pack(body: Mapping[str, Any]) -> str:
    """JSON, deflated, base64: a window's counts compress 4-8x, which keeps a dense window of 25 series under
    Kafka's default 1 MB record limit."""
    return base64.b64encode(zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 6)).decode()


def unpack(text: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(zlib.decompress(base64.b64decode(text)))
    return body


def add_sparse(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    """Sum of two sparse count vectors in `DriftWindow.to_dict`'s [[indices], [counts]] form."""
    counts: dict[int, int] = dict(zip(a[0], a[1], strict=True))
    for i, c in zip(b[0], b[1], strict=True):
        counts[i] = counts.get(i, 0) + c
    keys = sorted(counts)
    return [keys, [counts[i] for i in keys]]


def merge_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two `DriftWindow.to_dict()` states of the same window and series, added (what `DriftWindow.merge` does,
    without needing the reference)."""
    if a["key"] != b["key"] or a["series"] != b["series"]:
        raise ValueError("only states of the same window and series merge")
    times = [t for t in (a["first_event_time"], b["first_event_time"]) if t is not None]
    lasts = [t for t in (a["last_event_time"], b["last_event_time"]) if t is not None]
    merged = {
        "key": a["key"],
        "series": list(a["series"]),
        "bins": [add_sparse(x, y) for x, y in zip(a["bins"], b["bins"], strict=True)],
        "cells": [add_sparse(x, y) for x, y in zip(a["cells"], b["cells"], strict=True)],
        "missing": [x + y for x, y in zip(a["missing"], b["missing"], strict=True)],
        "first_event_time": min(times) if times else None,
        "last_event_time": max(lasts) if lasts else None,
    }
    # A state from before the time-of-day strata were kept has none: the merged window then has none either, and
    # is compared with the whole reference sample (partial strata would misstate the window's hours).
    if "strata" in a and "strata" in b:
        merged["strata"] = [add_sparse(x, y) for x, y in zip(a["strata"], b["strata"], strict=True)]
    return merged


@dataclass
class WindowBody:
    """A window's drift state as plain data: the champion's features (state of `features_version`'s reference)
    and one state per score series. What a partition checkpoints and sends to the merging agent."""

    key: int
    features_version: str | None = None
    features: dict[str, Any] | None = None
    scores: dict[str, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)
    """Series name → (variant, version, state)."""

    def versions(self) -> set[str]:
        found = {version for _, version, _ in self.scores.values()}
        if self.features_version is not None:
            found.add(self.features_version)
        return found

    def to_json(self) -> dict[str, Any]:
        body = {"f": self.features, "s": {name: list(v) for name, v in self.scores.items()}}
        return {
            "w": self.key,
            "fv": self.features_version,
            "sv": sorted({(v, ver) for v, ver, _ in self.scores.values()}),
            "z": pack(body),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WindowBody:
        body = unpack(data["z"])
        return cls(
            key=int(data["w"]),
            features_version=data["fv"],
            features=body["f"],
            scores={name: (v[0], v[1], v[2]) for name, v in body["s"].items()},
        )

    def merge(self, other: WindowBody) -> bool:
        """Add `other` (the same window from another partition) into this body. Feature states against another
        features version are left out (a champion change at the window's edge): returns False then."""
        if other.key != self.key:
            raise ValueError("only bodies of the same window merge")
        kept = True
        if other.features is not None:
            if self.features is None and self.features_version in (None, other.features_version):
                self.features_version, self.features = other.features_version, other.features
            elif self.features is not None and other.features_version == self.features_version:
                self.features = merge_state(self.features, other.features)
            else:
                kept = False
        for name, (variant, version, state) in other.scores.items():
            mine = self.scores.get(name)
            self.scores[name] = (variant, version, state if mine is None else merge_state(mine[2], state))
        return kept


# --- units ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    """One variant's score of a unit."""

    declined: bool
    amount: float
    topic: str
    offset: int
    experiment: str
    seq: int | None = None
    """Sequence number of the checkpoint that first wrote it (None: not written yet)."""
    counted: bool = False
    account: str | None = None
    """The account scored (the cluster of the A/B variance; None in records written before it was kept: the unit
    is then an account of its own)."""

    def dump(self) -> list[Any]:
        return [int(self.declined), self.amount, self.topic, self.offset, self.experiment, self.seq, self.account]


@dataclass(slots=True)
class LabelEntry:
    fraud: bool
    offset: int
    seq: int | None = None
    late_for: list[str] = field(default_factory=list)
    """Variants already counted when the label arrived: counted without it, and they stay so."""

    def dump(self) -> list[Any]:
        return [int(self.fraud), self.offset, self.seq, self.late_for]


@dataclass(slots=True)
class Unit:
    event_time: float
    variants: dict[str, Entry] = field(default_factory=dict)
    label: LabelEntry | None = None
    written: int = 0
    """Sequence number of the checkpoint that last wrote it (not stored: the largest of its entries' on recovery)."""

    def dump(self) -> dict[str, Any]:
        return {
            "t": self.event_time,
            "v": {name: e.dump() for name, e in self.variants.items()},
            "l": None if self.label is None else self.label.dump(),
        }

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> Unit:
        label = data.get("l")
        unit = cls(
            event_time=float(data["t"]),
            variants={
                name: Entry(
                    bool(d),
                    float(a),
                    str(tp),
                    int(o),
                    str(x),
                    None if s is None else int(s),
                    account=None if not rest or rest[0] is None else str(rest[0]),
                )
                for name, (d, a, tp, o, x, s, *rest) in data["v"].items()
            },
            label=None
            if label is None
            else LabelEntry(bool(label[0]), int(label[1]), None if label[2] is None else int(label[2]), list(label[3])),
        )
        seqs = [e.seq for e in unit.variants.values()] + [None if unit.label is None else unit.label.seq]
        unit.written = max((s for s in seqs if s is not None), default=0)
        return unit

    def outcome(self, variant: str) -> Outcome:
        """The variant's matured unit with the label that had arrived by then (`monitor.ab.outcome`'s rule: an
        approved transaction without a label is legitimate, a declined one is hidden)."""
        e = self.variants[variant]
        label = self.label
        if label is None or variant in label.late_for:
            fraud: bool | None = None if e.declined else False
        else:
            fraud = label.fraud
        return Outcome(variant=variant, declined=e.declined, fraud=fraud, amount=e.amount)


# --- drift windows -------------------------------------------------------------------------------------------


@dataclass
class PartitionWindow:
    key: int
    features_version: str | None = None
    features: DriftWindow | None = None
    scores: dict[str, tuple[str, str, DriftWindow]] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    """Topic code → offset of the last record whose effect is in the checkpointed state."""
    added: dict[str, int] = field(default_factory=dict)
    """Topic code → offset of the last record added since this state was built (not stored): a record delivered
    again before the next checkpoint — Faust re-delivers around a rebalance — is not added twice. Offsets of one
    topic-partition only grow, so one at or below it was added already."""
    dirty: bool = False
    rows: list[Mapping[str, float]] = field(default_factory=list)
    """The champion's features not added to `features` yet, with their event times: added at once (columnar) when
    the state is read — ~1 µs per event instead of ~25 µs one by one."""
    row_times: list[float] = field(default_factory=list)

    def flush(self) -> None:
        if self.rows and self.features is not None:
            self.features.add_rows(self.rows, self.row_times)
        self.rows, self.row_times = [], []

    def body(self) -> WindowBody:
        self.flush()
        return WindowBody(
            key=self.key,
            features_version=self.features_version,
            features=None if self.features is None else self.features.to_dict(),
            scores={name: (v, ver, w.to_dict()) for name, (v, ver, w) in self.scores.items()},
        )


# --- accounts (clusters) ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Cluster:
    """One account's counted units per variant (`monitor.ab.AccountSums`): what its contribution to the arm's
    cluster sums is, so that a new unit replaces it. Written with the sequence number `seq` of the checkpoint
    and the sums it had at its previous write (`prev`): the A/B counts of that checkpoint may be lost in a
    crash, and then `prev` is what they hold."""

    sums: dict[str, AccountSums] = field(default_factory=dict)
    written: dict[str, AccountSums] = field(default_factory=dict)
    seq: int = 0
    last: float = -math.inf
    """Event time of its newest counted unit (its expiry)."""

    def dump(self) -> dict[str, Any]:
        return {
            "s": {v: list(x) for v, x in self.sums.items()},
            "p": {v: list(x) for v, x in self.written.items()},
            "k": self.seq,
            "t": self.last,
        }


def _sums(data: Mapping[str, Any]) -> dict[str, AccountSums]:
    return {str(v): (int(x[0]), int(x[1]), int(x[2]), int(x[3]), int(x[4])) for v, x in data.items()}


# --- the partition ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The application settings the partition state needs (from MonitorAppSettings)."""

    partitions: int
    include_api_scores: bool = False
    allowed_lateness_s: float = 30.0
    unit_retention_s: float = 600.0
    srm_accounts: int = 20_000
    """The most accounts of one experiment one partition keeps for the sample-ratio check (`monitor.sampling`)."""
    idle_close_s: float = 30.0
    wall_clock: bool = True
    """A caught-up partition's clocks advance with the wall clock (MONITOR_WALL_CLOCK)."""
    clock_speed: float = 1.0
    """Event-time seconds per wall-clock second (MONITOR_CLOCK_SPEED): above 1, a caught-up partition's clocks
    advance from where records last left them at this speed, instead of jumping to the wall clock."""


@dataclass
class Clocks:
    """What the Faust edge knows about the partition when it checkpoints."""

    now: float
    scores_caught_up: bool
    """Every record of `scores` and `scores.shadow` in this partition has been read."""
    labels_caught_up: bool
    behind: frozenset[TopicKind] = frozenset()
    """Score topics of this partition with records not read yet. `scores` and `scores.shadow` are read
    independently, so one may be read ahead of the other; a time window closes only once each topic with unread
    records has passed its end, or the topic read ahead would close a window the other still feeds."""


class PartitionState:
    def __init__(self, partition: int, stats: MonitorSettings, policy: Policy, book: ReferenceBook) -> None:
        self.partition = partition
        self.stats = stats
        self.policy = policy
        self.book = book
        self.seq = 0
        self.units: dict[str, Unit] = {}
        self.counts: dict[str, ABCounts] = {}
        self.accounts: dict[str, AccountSample] = {}
        """Experiment → the sampled accounts of the sample-ratio check."""
        self.account_counts: dict[str, Counter[str]] = {}
        self.clusters: dict[str, dict[str, Cluster]] = {}
        """Experiment → account → the account's counted sums per variant (the cluster-robust variance's terms)."""
        self._dirty_clusters: set[tuple[str, str]] = set()
        self._cluster_expiry: list[tuple[float, str, str]] = []
        self.windows: dict[int, PartitionWindow] = {}
        self.closed_below: int | None = None
        self.ordinal = 0
        self.score_clock = -math.inf
        self.topic_clocks: dict[str, float] = {}
        """Topic code ("s", "h") → the newest score event time read from it."""
        self.label_clock = -math.inf
        self._anchors: dict[str, tuple[float, float, float]] = {}
        """Clock ("s" scores, "l" labels) → (its value and the wall time when records last moved it, the value it was
        last advanced to)."""
        self.last_live_at = -math.inf
        """Wall time of the last new live score (count windows' idle close)."""
        self.processed: dict[str, int] = {}
        self.drift_notes: Counter[str] = Counter()
        self.units_counted = 0
        self._dirty_units: set[str] = set()
        self._dirty_accounts: list[tuple[str, str]] = []
        self._dirty_levels: set[str] = set()
        self._left_accounts: list[tuple[str, str]] = []
        """(experiment, account) of accounts that left a sample since the last checkpoint (their records go)."""
        self._account_queue: list[tuple[float, str, str]] = []
        """(first event time, experiment, account) of sampled accounts not counted in the sample-ratio check yet."""
        self._pending: set[str] = set()
        """Units with a variant not counted yet (`pending_units`: read by every health check, so not a scan)."""
        self._maturity: list[tuple[float, str]] = []
        self._expiry: list[tuple[float, str]] = []
        self._target_below: int | None = None
        self._published: set[str] = set()

    # --- records in ------------------------------------------------------------------------------------------

    def on_score(
        self, score: Score, topic: TopicKind, offset: int, now: float
    ) -> tuple[ScoreOutcome, DriftNote | None]:
        """One record of `scores` (topic "scores") or `scores.shadow` ("shadow")."""
        code = CODES[topic]
        self.saw(topic, offset)
        t = score.event_time.timestamp()
        self.score_clock = max(self.score_clock, t)
        self.topic_clocks[code] = max(self.topic_clocks.get(code, -math.inf), t)
        if score.source == "api" and not self.policy.include_api_scores:
            return "ignored", None
        unit = self.units.get(score.event_id)
        entry = None if unit is None else unit.variants.get(score.variant)
        if entry is not None and (entry.topic, entry.offset) != (code, offset):
            return "duplicate", None
        replay = entry is not None
        live = code == "s"
        if live and not replay:
            self.ordinal += 1
            self.last_live_at = now
        note = self._drift(score, code, offset, t)
        if replay:
            return "replayed", note
        if unit is None:
            unit = self.units[score.event_id] = Unit(event_time=t)
        unit.variants[score.variant] = Entry(
            declined=score.decision == "decline",
            amount=score.amount,
            topic=code,
            offset=offset,
            experiment=score.experiment_id,
            account=score.account_id,
        )
        self._dirty_units.add(score.event_id)
        self._pending.add(score.event_id)
        heapq.heappush(self._maturity, (unit.event_time, score.event_id))
        if live:
            self._first_seen(score.experiment_id, score.account_id, score.variant, t)
        return "counted", note

    def _first_seen(self, experiment: str, account: str, variant: str, t: float) -> None:
        sample = self.accounts.get(experiment)
        if sample is None:
            sample = self.accounts[experiment] = AccountSample(self.policy.srm_accounts)
        level = sample.level
        entry, left = sample.offer(account, variant, t)
        if entry is not None:
            heapq.heappush(self._account_queue, (t, experiment, account))
            self._dirty_accounts.append((experiment, account))
        if sample.level != level:
            self._dirty_levels.add(experiment)
            self._forget_accounts(experiment, left)

    def _forget_accounts(self, experiment: str, left: Mapping[str, FirstSeen]) -> None:
        counts = self.account_counts.get(experiment)
        for account, entry in left.items():
            if entry.counted and counts is not None:
                counts[entry.variant] -= 1
            self._left_accounts.append((experiment, account))

    def saw(self, topic: TopicKind, offset: int) -> None:
        """A record of `topic` was processed (also one too defective to apply: the edge calls this for it)."""
        code = CODES[topic]
        self.processed[code] = max(self.processed.get(code, -1), offset)

    def on_label(self, label: Label, offset: int) -> LabelOutcome:
        self.saw("labels", offset)
        self.label_clock = max(self.label_clock, label.labeled_at.timestamp())
        unit = self.units.get(label.event_id)
        if unit is not None and unit.label is not None:
            return "replayed" if unit.label.offset == offset else "duplicate"
        if unit is None:
            unit = self.units[label.event_id] = Unit(event_time=label.event_time.timestamp())
            heapq.heappush(self._maturity, (unit.event_time, label.event_id))
        late = [name for name, e in unit.variants.items() if e.counted]
        unit.label = LabelEntry(fraud=label.is_fraud, offset=offset, late_for=late)
        self._dirty_units.add(label.event_id)
        return "joined"

    def _window_of(self, t: float) -> int:
        if self.stats.window == "time":
            return window_key(self.stats, t)
        return (self.ordinal - 1 if self.ordinal else 0) // self.events_per_window

    @property
    def events_per_window(self) -> int:
        """Count windows: the partition's share of MONITOR_WINDOW_EVENTS (the merged window sums the partitions)."""
        return max(1, math.ceil(self.stats.window_events / self.policy.partitions))

    def _drift(self, score: Score, code: str, offset: int, t: float) -> DriftNote | None:
        key = self._window_of(t)
        if self.closed_below is not None and key < self.closed_below:
            self.drift_notes["late"] += 1
            return "late"
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = PartitionWindow(key)
        if offset <= max(window.applied.get(code, -1), window.added.get(code, -1)):
            return None
        window.added[code] = offset
        note: DriftNote | None = None
        name = score_series(score.variant, score.model_version)
        series = window.scores.get(name)
        if series is None:
            reference = self.book.score(score.variant, score.model_version)
            if reference is not None:
                series = window.scores[name] = (score.variant, score.model_version, DriftWindow(reference, key))
        if series is None:
            note = "no_reference"
        else:
            series[2].add_score(f"{score.variant}@{score.model_version}", score.score, t)
            window.dirty = True
        if code == "s" and score.variant == self.stats.champion and score.features is not None:
            if window.features_version is None:
                window.features_version = score.model_version
                reference = self.book.features(score.model_version)
                window.features = None if reference is None else DriftWindow(reference, key)
            if window.features_version != score.model_version:
                note = "version_changed"
            elif window.features is None:
                note = "no_reference"
            else:
                window.rows.append(score.features)
                window.row_times.append(t)
                window.dirty = True
        if note is not None:
            self.drift_notes[note] += 1
        return note

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def _advanced(self, code: str, clock: float, now: float) -> float:
        """A caught-up clock moved on with the wall clock. At speed 1 event time is wall time: the clock is now. On a
        simulated clock that runs `clock_speed` times faster (and behind the wall clock), it runs on from where the
        records last left it, at that speed — so the last windows close and labels mature after the traffic stops."""
        speed = self.policy.clock_speed
        if speed == 1.0:
            return max(clock, now)
        anchor = self._anchors.get(code)
        if anchor is None or clock > anchor[2]:  # records moved it since: run on from there
            self._anchors[code] = (clock, now, clock)
            return clock
        advanced = max(clock, anchor[0] + speed * (now - anchor[1]))
        self._anchors[code] = (anchor[0], anchor[1], advanced)
        return advanced

    def checkpoint(self, clocks: Clocks) -> list[Record]:
        """The records to write now, in the order recovery relies on (module docstring); afterwards the offsets of
        every record consumed so far may be committed. Also decides which windows are due to close
        (`due_windows`)."""
        self.seq += 1
        k = self.seq
        p = self.partition
        if clocks.scores_caught_up and self.policy.wall_clock:
            self.score_clock = self._advanced("s", self.score_clock, clocks.now)
        if clocks.labels_caught_up and self.policy.wall_clock:
            self.label_clock = self._advanced("l", self.label_clock, clocks.now)
        writes: list[Record] = []
        for window in self.windows.values():
            if window.dirty:
                window.applied = {
                    code: max(window.applied.get(code, -1), self.processed.get(code, -1)) for code in ("s", "h")
                }
                record = {**window.body().to_json(), "seq": k, "o": window.applied}
                writes.append((window_record_key(p, window.key), record))
                window.dirty = False
        writes += self._unit_writes(k)
        changed = self._sweep(k)
        for experiment in sorted(self._dirty_levels):
            writes.append((level_key(p, experiment), self.accounts[experiment].level))
        self._dirty_levels.clear()
        for experiment, account in self._dirty_accounts:
            entry = self.accounts[experiment].get(account)
            if entry is not None:  # else it left the sample again before this checkpoint
                writes.append((account_key(p, experiment, account), [entry.variant, entry.t]))
        self._dirty_accounts.clear()
        for experiment, account in sorted(self._dirty_clusters):
            cluster = self.clusters[experiment][account]
            cluster.seq = k
            writes.append((cluster_key(p, experiment, account), cluster.dump()))
            cluster.written = dict(cluster.sums)
        self._dirty_clusters.clear()
        self._count_accounts()
        for experiment in sorted(changed):
            state = {"counts": self.counts[experiment].to_dict(), "seq": k, "cutoff": self.label_clock}
            writes.append((ab_key(p, experiment), state))
        writes += self._expire(k)
        writes += [(account_key(p, experiment, account), None) for experiment, account in self._left_accounts]
        self._left_accounts.clear()
        writes.append((meta_key(p), self._meta()))
        self._target_below = self._closing_target(clocks)
        return writes

    def _unit_writes(self, k: int) -> list[Record]:
        writes: list[Record] = []
        for event_id in self._dirty_units:
            unit = self.units.get(event_id)
            if unit is None:
                continue
            for e in unit.variants.values():
                if e.seq is None:
                    e.seq = k
            if unit.label is not None and unit.label.seq is None:
                unit.label.seq = k
            unit.written = k
            writes.append((unit_key(self.partition, event_id), unit.dump()))
        self._dirty_units.clear()
        return writes

    def _count_accounts(self) -> None:
        """Count in the sample-ratio check the accounts whose first score is behind both clocks (module docstring)."""
        cutoff = min(self.label_clock - self.stats.label_maturity_s, self.score_clock - self.policy.allowed_lateness_s)
        while self._account_queue and self._account_queue[0][0] <= cutoff:
            _, experiment, account = heapq.heappop(self._account_queue)
            entry = self.accounts[experiment].get(account)
            if entry is None or entry.counted:  # it left the sample
                continue
            entry.counted = True
            self.account_counts.setdefault(experiment, Counter())[entry.variant] += 1

    def _sweep(self, k: int) -> set[str]:
        """Count every written unit variant whose maturity has passed on the label clock."""
        changed: set[str] = set()
        maturity = self.stats.label_maturity_s
        deadline = self.label_clock - maturity
        while self._maturity and self._maturity[0][0] <= deadline:
            _, event_id = heapq.heappop(self._maturity)
            unit = self.units.get(event_id)
            if unit is None:
                continue
            for name, e in unit.variants.items():
                if e.counted or e.seq is None or e.seq > k:
                    continue
                e.counted = True
                counts = self.counts.setdefault(e.experiment, ABCounts())
                if e.account is None:
                    counts.add(unit.outcome(name))
                else:
                    cluster = self.clusters.setdefault(e.experiment, {}).setdefault(e.account, Cluster())
                    cluster.sums[name] = counts.add(unit.outcome(name), cluster.sums.get(name))
                    if unit.event_time > cluster.last:
                        cluster.last = unit.event_time
                        expires = unit.event_time + maturity + self.policy.unit_retention_s
                        heapq.heappush(self._cluster_expiry, (expires, e.experiment, e.account))
                    self._dirty_clusters.add((e.experiment, e.account))
                changed.add(e.experiment)
                self.units_counted += 1
            if all(e.counted for e in unit.variants.values()):
                self._pending.discard(event_id)
                heapq.heappush(self._expiry, (unit.event_time + maturity + self.policy.unit_retention_s, event_id))
        return changed

    def _expire(self, k: int) -> list[Record]:
        """Delete units past their retention — but not one written in the last `EXPIRY_GUARD` checkpoints: a restart
        replays from the last committed offset, and a record re-read after its unit was deleted would count again.
        (The clock can jump further than the retention within one checkpoint: a partition catching up on the wall
        clock after a pause.)"""
        writes: list[Record] = []
        later: list[tuple[float, str]] = []
        maturity = self.stats.label_maturity_s
        while self._expiry and self._expiry[0][0] <= self.label_clock:
            item = heapq.heappop(self._expiry)
            unit = self.units.get(item[1])
            if unit is None or any(not e.counted for e in unit.variants.values()):
                continue
            if unit.event_time + maturity + self.policy.unit_retention_s > self.label_clock:
                continue
            if unit.written > k - EXPIRY_GUARD:
                later.append(item)
                continue
            del self.units[item[1]]
            self._dirty_units.discard(item[1])
            writes.append((unit_key(self.partition, item[1]), None))
        for item in later:
            heapq.heappush(self._expiry, item)
        return writes + self._expire_accounts(k)

    def _expire_accounts(self, k: int) -> list[Record]:
        """Forget an account's cluster sums once its newest counted unit is past the units' retention, with the same
        guard. Its contribution stays in the A/B counts; if it comes back later it is a new cluster. (Its first-seen
        record stays while the account is in its sample: the sample-ratio counts are rebuilt from those records at
        recovery.)"""
        writes: list[Record] = []
        later: list[tuple[float, str, str]] = []
        horizon = self.stats.label_maturity_s + self.policy.unit_retention_s
        while self._cluster_expiry and self._cluster_expiry[0][0] <= self.label_clock:
            item = heapq.heappop(self._cluster_expiry)
            _, experiment, account = item
            cluster = self.clusters.get(experiment, {}).get(account)
            if cluster is None or cluster.last + horizon > self.label_clock:
                continue
            if cluster.seq > k - EXPIRY_GUARD or (experiment, account) in self._dirty_clusters:
                later.append(item)
                continue
            del self.clusters[experiment][account]
            writes.append((cluster_key(self.partition, experiment, account), None))
        for item in later:
            heapq.heappush(self._cluster_expiry, item)
        return writes

    def _meta(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "closed_below": self.closed_below,
            "ordinal": self.ordinal,
            "score_clock": None if math.isinf(self.score_clock) else self.score_clock,
            "topic_clocks": dict(self.topic_clocks),
            "processed": dict(self.processed),
            "label_clock": None if math.isinf(self.label_clock) else self.label_clock,
        }

    # --- closing windows ----------------------------------------------------------------------------------------

    def _closing_target(self, clocks: Clocks) -> int | None:
        """Every window below the returned index may close now."""
        current = self.closed_below
        if self.stats.window == "time":
            watermark = self._watermark(clocks)
            if math.isinf(watermark):
                return current
            target = math.floor((watermark - self.policy.allowed_lateness_s) / self.stats.window_seconds)
        else:
            open_window = self.ordinal // self.events_per_window
            target = open_window
            quiet = clocks.now - self.last_live_at >= self.policy.idle_close_s
            if clocks.scores_caught_up and quiet and self.ordinal % self.events_per_window and self.windows:
                target = open_window + 1
        return target if current is None else max(current, target)

    def _watermark(self, clocks: Clocks) -> float:
        """The event time this partition's scores have reached: the newest read, but no further than a score topic
        with unread records has reached (-inf while such a topic has not been read at all)."""
        held = [self.topic_clocks.get(CODES[kind], -math.inf) for kind in clocks.behind if kind != "labels"]
        return min([self.score_clock, *held])

    def due_windows(self) -> list[int]:
        """Windows to close after the last checkpoint, oldest first."""
        if self._target_below is None:
            return []
        return sorted(k for k in self.windows if k < self._target_below)

    def partial(self, key: int) -> dict[str, Any]:
        """A closed window's state for the merging agent."""
        return {"type": "window", "p": self.partition, **self.windows[key].body().to_json()}

    def close(self, keys: Iterable[int]) -> list[Record]:
        """Forget windows whose partials the merging agent has received, and advance the closed mark: the meta
        record first (a crash before the deletions then drops the windows at recovery), then the deletions."""
        target, before = self._target_below, self.closed_below
        if target is not None and (self.closed_below is None or target > self.closed_below):
            self.closed_below = target
            if self.stats.window == "events":
                self.ordinal = max(self.ordinal, target * self.events_per_window)
        deletions = [window_record_key(self.partition, key) for key in keys if self.windows.pop(key, None) is not None]
        if before == self.closed_below and not deletions:
            return []
        return [(meta_key(self.partition), self._meta()), *((key, None) for key in deletions)]

    def progress(self) -> dict[str, Any] | None:
        """The merging agent's message: every window of this partition below `below` is closed."""
        if self.closed_below is None:
            return None
        return {"type": "progress", "p": self.partition, "n": self.policy.partitions, "below": self.closed_below}

    def ab_messages(self) -> list[dict[str, Any]]:
        """The cumulative A/B counts and first-seen accounts of each experiment (the merging agent keeps the latest
        per partition)."""
        names = set(self.counts) | set(self.account_counts)
        return [
            {
                "type": "ab",
                "p": self.partition,
                "x": name,
                "counts": self.counts.get(name, ABCounts()).to_dict(),
                "accounts": dict(self.account_counts.get(name, Counter())),
            }
            for name in sorted(names)
        ]

    # --- recovery ------------------------------------------------------------------------------------------------

    @staticmethod
    def versions_in(records: Iterable[tuple[str, Any]]) -> set[str]:
        """Model versions whose references the windows among `records` need (load them before `restore`)."""
        found: set[str] = set()
        for key, value in records:
            if "/w/" in key and isinstance(value, Mapping):
                if value.get("fv"):
                    found.add(str(value["fv"]))
                found.update(str(version) for _, version in value.get("sv", []))
        return found

    def restore(self, records: Iterable[tuple[str, Any]]) -> list[Record]:
        """Rebuild a fresh state from the partition's recovered records. Returns the deletions recovery decided
        (windows a crash left behind after closing them)."""
        units: dict[str, Mapping[str, Any]] = {}
        windows: list[Mapping[str, Any]] = []
        seqs: list[int] = []
        ab: dict[str, tuple[int, float]] = {}
        clusters: list[tuple[str, str, Mapping[str, Any]]] = []
        first_seen: list[tuple[str, str, FirstSeen]] = []
        levels: dict[str, int] = {}
        meta: Mapping[str, Any] | None = None
        for key, value in records:
            if value is None:
                continue
            if key == meta_key(self.partition):
                meta = value
                continue
            _, kind, rest = key.split("/", 2)
            if kind == "u":
                units[rest] = value
            elif kind == "w":
                windows.append(value)
                seqs.append(int(value["seq"]))
            elif kind == "ab":
                self.counts[rest] = ABCounts.from_dict(value["counts"])
                ab[rest] = (int(value["seq"]), float(value["cutoff"]))
                seqs.append(int(value["seq"]))
            elif kind == "a":
                experiment, account = rest.split("/", 1)
                first_seen.append((experiment, account, FirstSeen(str(value[0]), float(value[1]))))
            elif kind == "l":
                levels[rest] = int(value)
            elif kind == "c":
                experiment, account = rest.split("/", 1)
                clusters.append((experiment, account, value))
                seqs.append(int(value["k"]))
        if meta is not None:
            seqs.append(int(meta["seq"]))
            self.closed_below = meta["closed_below"]
            self.ordinal = int(meta["ordinal"])
            self.score_clock = -math.inf if meta["score_clock"] is None else float(meta["score_clock"])
            self.topic_clocks = {str(k): float(v) for k, v in (meta.get("topic_clocks") or {}).items()}
            self.processed = {str(k): int(v) for k, v in (meta.get("processed") or {}).items()}
            self.label_clock = -math.inf if meta["label_clock"] is None else float(meta["label_clock"])
        self.label_clock = max([self.label_clock, *(cutoff for _, cutoff in ab.values())])
        self.seq = max(seqs, default=0)
        maturity = self.stats.label_maturity_s
        for experiment, account, value in clusters:
            # Written at a checkpoint whose A/B counts were lost in a crash: the counts hold its previous sums.
            seq = int(value["k"])
            sums = _sums(value["s"] if seq <= ab.get(experiment, (-1, 0.0))[0] else value["p"])
            last = float(value["t"])
            self.clusters.setdefault(experiment, {})[account] = Cluster(dict(sums), dict(sums), seq, last)
            expires = last + maturity + self.policy.unit_retention_s
            heapq.heappush(self._cluster_expiry, (expires, experiment, account))
        for event_id, data in units.items():
            unit = self.units[event_id] = Unit.load(data)
            for e in unit.variants.values():
                seq, cutoff = ab.get(e.experiment, (-1, -math.inf))
                e.counted = e.seq is not None and e.seq <= seq and unit.event_time + maturity <= cutoff
            if any(not e.counted for e in unit.variants.values()):
                self._pending.add(event_id)
            heapq.heappush(self._maturity, (unit.event_time, event_id))
        deletions: list[Record] = self._restore_accounts(levels, first_seen)
        for data in windows:
            index = int(data["w"])
            if self.closed_below is not None and index < self.closed_below:
                deletions.append((window_record_key(self.partition, index), None))
                continue
            self.windows[index] = self._window_from(data)
        return deletions

    def _restore_accounts(
        self, levels: Mapping[str, int], first_seen: Iterable[tuple[str, str, FirstSeen]]
    ) -> list[Record]:
        """The account samples, and the deletions of the accounts a crash left below their sample's level (or that
        a smaller `srm_accounts` leaves out now)."""
        p = self.partition
        deletions: list[Record] = []
        for experiment, account, entry in first_seen:
            sample = self.accounts.get(experiment)
            if sample is None:
                sample = self.accounts[experiment] = AccountSample(self.policy.srm_accounts, levels.get(experiment, 0))
            if sample.restore(account, entry):
                heapq.heappush(self._account_queue, (entry.t, experiment, account))
            else:
                deletions.append((account_key(p, experiment, account), None))
        for experiment, sample in self.accounts.items():
            level = sample.level
            left = sample.fit()
            deletions += [(account_key(p, experiment, account), None) for account in left]
            if sample.level != level:
                deletions.insert(0, (level_key(p, experiment), sample.level))
        return deletions

    def _window_from(self, data: Mapping[str, Any]) -> PartitionWindow:
        body = WindowBody.from_json(data)
        window = PartitionWindow(body.key, applied={k: int(v) for k, v in data["o"].items()})
        if body.features_version is not None:
            window.features_version = body.features_version
            reference = self.book.features(body.features_version)
            if reference is not None and body.features is not None:
                window.features = DriftWindow.from_dict(reference, body.features)
        for name, (variant, version, state) in body.scores.items():
            reference = self.book.score(variant, version)
            if reference is not None:
                window.scores[name] = (variant, version, DriftWindow.from_dict(reference, state))
        return window

    # --- introspection -------------------------------------------------------------------------------------------

    @property
    def pending_units(self) -> int:
        """Units with a variant not counted yet."""
        return len(self._pending)
