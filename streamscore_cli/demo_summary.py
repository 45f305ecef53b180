"""What `streamscore demo` read back from Kafka, tallied for its summary: scores per variant and model version,
shadow scores, dead letters by reason, latency percentiles. Pure: records in, counts and tables out."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rich import box
from rich.table import Table

from streamscore.contracts import DeadLetter, HeadersIn, Score, header_value, parse_event
from streamscore.errors import EventError
from streamscore.lag import GroupLag
from streamscore_cli.demo_defects import DEFECT_HEADER


@dataclass
class VariantTally:
    """Scores of one (variant, model version)."""

    scores: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    feature_status: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def percentiles(self) -> tuple[float, float] | None:
        return latency_percentiles(self.latencies_ms)


def latency_percentiles(latencies_ms: Iterable[float]) -> tuple[float, float] | None:
    """(p50, p99) in milliseconds, linear interpolation between ranks; None without a sample."""
    import numpy as np  # the demo loads it anyway; `streamscore --help` (which imports this module) does not need it

    values = np.fromiter(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return None
    p50, p99 = np.percentile(values, [50.0, 99.0])
    return float(p50), float(p99)


@dataclass
class OutputTally:
    """Everything read back from `scores`, `scores.shadow` and the dead-letter topic for one demo run.

    Records that belong to earlier traffic (a backlog the scorer caught up on) are counted apart: a score whose
    transaction's event time is before `events_since_ms` (the simulated clock: each run continues the world where the
    last one stopped), or a dead letter whose original record's timestamp (the broker's, wall clock) is before
    `since_ms`."""

    since_ms: int
    events_since_ms: int | None = None
    """Default: `since_ms` (event times on the wall clock)."""
    live: dict[tuple[str, str], VariantTally] = field(default_factory=dict)
    shadow: dict[tuple[str, str], VariantTally] = field(default_factory=dict)
    dead_letters: Counter[str] = field(default_factory=Counter)
    injected: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(defect the demo injected, reason the scorer gave) → dead letters."""
    live_event_ids: set[str] = field(default_factory=set)
    decisions: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """Live scores: event id → (variant, model version, decision), to judge against the labels."""
    earlier: int = 0
    unreadable: int = 0

    def add_score(self, value: bytes | None, *, shadow: bool) -> None:
        try:
            score = parse_event(Score, value or b"")
        except EventError:
            self.unreadable += 1
            return
        since = self.since_ms if self.events_since_ms is None else self.events_since_ms
        if score.event_time.timestamp() * 1000 < since:
            self.earlier += 1
            return
        tallies = self.shadow if shadow else self.live
        tally = tallies.setdefault((score.variant, score.model_version), VariantTally())
        tally.scores += 1
        tally.decisions[score.decision] += 1
        tally.feature_status[score.feature_status] += 1
        tally.latencies_ms.append(score.latency_ms)
        if not shadow:
            self.live_event_ids.add(score.event_id)
            self.decisions[score.event_id] = (score.variant, score.model_version, score.decision)

    def add_dead_letter(self, headers: HeadersIn | None) -> None:
        try:
            letter = DeadLetter.from_headers(headers)
        except ValueError:
            self.unreadable += 1
            return
        if letter.original_timestamp_ms < self.since_ms:
            self.earlier += 1
            return
        reason = letter.error_class.value
        self.dead_letters[reason] += 1
        injected = header_value(headers, DEFECT_HEADER)
        self.injected[(injected.decode(errors="replace") if injected else "—", reason)] += 1

    @property
    def live_scores(self) -> int:
        return sum(t.scores for t in self.live.values())

    @property
    def shadow_scores(self) -> int:
        return sum(t.scores for t in self.shadow.values())

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letters.values())

    @property
    def accounted(self) -> int:
        """Input records with an outcome: distinct transactions scored live, plus dead letters."""
        return len(self.live_event_ids) + self.dead_lettered

    @property
    def duplicates(self) -> int:
        """Live scores beyond one per transaction (0 under exactly-once)."""
        return self.live_scores - len(self.live_event_ids)

    def all_latencies(self) -> list[float]:
        return [v for tally in self.live.values() for v in tally.latencies_ms]


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "—"


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def scores_table(tallies: Mapping[tuple[str, str], VariantTally], title: str, whole: int | None = None) -> Table:
    """One row per (variant, model version): count, share of `whole` (default: of these scores), decisions,
    feature status, latency percentiles."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("variant")
    table.add_column("version")
    for name in ("scores", "share", "review", "decline", "features ok", "p50 ms", "p99 ms"):
        table.add_column(name, justify="right")
    total = whole if whole is not None else sum(t.scores for t in tallies.values())
    for (variant, version), tally in sorted(tallies.items()):
        p = tally.percentiles()
        table.add_row(
            variant,
            f"v{version}",
            f"{tally.scores:,}",
            _share(tally.scores, total),
            f"{tally.decisions['review']:,}",
            f"{tally.decisions['decline']:,}",
            _share(tally.feature_status["ok"], tally.scores),
            _ms(p[0]) if p else "—",
            _ms(p[1]) if p else "—",
        )
    return table


def dead_letters_table(tally: OutputTally, injected: Mapping[str, int]) -> Table:
    """Dead letters by reason beside what the demo injected of that kind."""
    table = Table(
        title="dead letters (transactions.dlq) by dlq-error-class",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    table.add_column("reason")
    table.add_column("injected", justify="right")
    table.add_column("dead-lettered", justify="right")
    table.add_column("of them as injected", justify="right")
    for reason in sorted(set(tally.dead_letters) | set(injected)):
        matched = tally.injected[(reason, reason)]
        table.add_row(
            reason,
            f"{injected.get(reason, 0):,}",
            f"{tally.dead_letters[reason]:,}",
            f"{matched:,}" if matched else "—",
        )
    return table


def metric_sum(metrics_text: str, name: str) -> float | None:
    """The sum of every sample of gauge or counter `name` in a Prometheus text exposition; None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    values = [
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name
    ]
    return float(sum(values)) if values else None


def caught_up(lag: GroupLag, topic: str, partitions: int) -> bool:
    """Whether the group has consumed every readable record of `topic`: each of its `partitions` has a committed
    offset with nothing readable after it, or is empty. A partition the group has no row for yet (it has not
    joined, nothing committed) is not caught up."""
    rows = [p for p in lag.partitions if p.topic == topic]
    return len({p.partition for p in rows}) == partitions and all(
        p.lag == 0 or (p.current_offset is None and not p.log_end_offset) for p in rows
    )


# --- expected (the test split at the operating point) next to seen (the live traffic) ----------------------------

Z_95 = 1.959963984540054
"""Two-sided 95 % normal quantile."""


@dataclass(frozen=True)
class Expectation:
    """What a model version's test split predicts at its operating point (training's version tags): its decline
    rate, precision and recall, and the counts they were measured on."""

    decline_rate: float
    precision: float
    recall: float
    rows: int
    fraud: int
    declined: int

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Expectation | None:
        """None for a version registered without the figures (before operating points were recorded)."""
        try:
            return cls(
                decline_rate=float(tags["test_decline_rate"]),
                precision=float(tags["test_decline_precision"]),
                recall=float(tags["test_decline_recall"]),
                rows=int(tags["test_rows"]),
                fraud=int(tags["test_fraud"]),
                declined=int(tags["test_declined"]),
            )
        except (KeyError, ValueError):
            return None

    @property
    def caught_share(self) -> float:
        """Fraud declined per transaction: the A/B test's metric (the monitor shows it per 1 000)."""
        return self.decline_rate * self.precision


@dataclass
class Seen:
    """What one (variant, version) did on the live traffic, judged by the labels the traffic came with."""

    transactions: int = 0
    declined: int = 0
    fraud: int = 0
    fraud_declined: int = 0


def seen_by_variant(
    decisions: Mapping[str, tuple[str, str, str]], labels: Mapping[str, bool]
) -> dict[tuple[str, str], Seen]:
    """Live decisions (event id → variant, version, decision) against the labels (event id → fraud as reported);
    a transaction without a label is left out."""
    seen: dict[tuple[str, str], Seen] = {}
    for event_id, (variant, version, decision) in decisions.items():
        fraud = labels.get(event_id)
        if fraud is None:
            continue
        s = seen.setdefault((variant, version), Seen())
        declined = decision == "decline"
        s.transactions += 1
        s.declined += declined
        s.fraud += fraud
        s.fraud_declined += fraud and declined
    return seen


def band(p: float, n_live: int, n_test: int) -> tuple[float, float]:
    """The 95 % interval a proportion seen on `n_live` units should fall in when the test split measured `p` on
    `n_test`: both are samples of the same process, so the difference of the two proportions has variance
    p(1 − p)(1/n_live + 1/n_test) (normal approximation, clipped to [0, 1])."""
    if n_live <= 0 or n_test <= 0:
        return 0.0, 1.0
    half = Z_95 * math.sqrt(p * (1.0 - p) * (1.0 / n_live + 1.0 / n_test))
    return max(0.0, p - half), min(1.0, p + half)


@dataclass(frozen=True)
class Check:
    """One figure of one live variant: what the test split predicts (with its 95 % interval) and what was seen."""

    variant: str
    version: str
    figure: str
    expected: float
    low: float
    high: float
    seen: float | None
    """None: nothing to measure it on (no declines for precision, no fraud for recall)."""
    n: int
    n_test: int
    """The test split's count the expectation was measured on (a test can widen the interval from it)."""

    @property
    def within(self) -> bool | None:
        return None if self.seen is None else self.low <= self.seen <= self.high

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "within": self.within}


def expectation_checks(seen: Mapping[tuple[str, str], Seen], expected: Mapping[str, Expectation | None]) -> list[Check]:
    """Decline rate, precision and recall of each live (variant, version) against its version's test split."""
    checks: list[Check] = []
    for (variant, version), s in sorted(seen.items()):
        e = expected.get(version)
        if e is None:
            continue
        for figure, p, n_test, hits, n in (
            ("decline rate", e.decline_rate, e.rows, s.declined, s.transactions),
            ("precision", e.precision, e.declined, s.fraud_declined, s.declined),
            ("recall", e.recall, e.fraud, s.fraud_declined, s.fraud),
        ):
            low, high = band(p, n, n_test)
            checks.append(Check(variant, version, figure, p, low, high, hits / n if n else None, n, n_test))
    return checks


def expectations_table(checks: Iterable[Check]) -> Table:
    table = Table(
        title="each live variant at its operating point: expected (test split) next to seen (labels of this traffic)",
        box=box.SIMPLE,
    )
    for name in ("variant", "version", "figure", "expected", "95 % interval", "seen", "on", ""):
        table.add_column(name, justify="left" if name in ("variant", "version", "figure", "") else "right")
    for c in checks:
        verdict = {True: "[green]within[/]", False: "[red]outside[/]", None: "[dim]n/a[/]"}[c.within]
        table.add_row(
            c.variant,
            f"v{c.version}",
            c.figure,
            f"{c.expected:.2%}",
            f"{c.low:.2%} – {c.high:.2%}",
            "—" if c.seen is None else f"{c.seen:.2%}",
            f"{c.n:,}",
            verdict,
        )
    return table
