"""Drift and A/B records as rich tables for someone who has never heard of PSI: what changed, how sure we are,
what to do (`streamscore report`). Pure: records in, renderables out."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from monitor.ab import ABRecord, Comparison, VariantMetrics
from monitor.drift import DriftRecord
from monitor.operating import OperatingPointView
from monitor.reference import SCORE_PREFIX

METRIC_WORDS = {
    "fraud_caught": "fraud caught per 1 000 transactions",
    "fraud_missed": "fraud let through per 1 000 transactions",
    "false_decline": "good customers declined per 1 000 transactions",
    "decline": "declines per 1 000 transactions",
}
SMALL_PSI = 0.1


def _what(feature: str) -> str:
    if feature.startswith(SCORE_PREFIX):
        return f"score of {feature[len(SCORE_PREFIX) :]}"
    return feature


def _how_much(r: DriftRecord) -> Text:
    if r.psi >= r.psi_threshold:
        return Text(f"large (PSI {r.psi:.2f})", style="bold red")
    if r.psi >= min(SMALL_PSI, r.psi_threshold):
        return Text(f"moderate (PSI {r.psi:.2f})", style="yellow")
    return Text(f"small (PSI {r.psi:.3f})")


def _how_sure(r: DriftRecord) -> str:
    if r.p_value is None or r.threshold is None:
        return "not tested"
    chance = "below 1 in a million" if r.p_value < 1e-6 else f"{r.p_value:.2g}"
    verdict = "sure" if r.drifted else "not sure"
    return f"{verdict}: chance it is noise {chance} (needs ≤ {r.threshold:.2g})"


def _what_to_do(r: DriftRecord) -> str:
    if r.p_value is None:
        return f"Too few values ({r.events - r.missing}) to test: wait for busier windows."
    if r.drifted and r.psi_exceeded:
        return "Real and large: check where this input comes from; retrain if it stays."
    if r.drifted:
        return "Real but small: keep watching."
    if r.psi_exceeded:
        return "Looks large but could be noise: wait for the next window."
    return "Nothing."


def drift_table(records: Sequence[DriftRecord]) -> Table:
    """One window's records: changed series first, then by PSI."""
    first = records[0]
    changed = sum(r.drifted for r in records)
    title = (
        f"Window {first.window}: {first.window_start:%Y-%m-%d %H:%M:%S} – {first.window_end:%H:%M:%S} UTC — "
        f"{changed} of {len(records)} inputs and scores changed"
    )
    caption = (
        f"'Changed' means the values no longer look like the training data ({first.correction} control across "
        f"{first.tested} tests: with nothing changing, a false alarm in about 1 window out of "
        f"{1 / first.alpha:,.0f}). PSI sizes the change: below {SMALL_PSI} small, {first.psi_threshold} and "
        "more large."
    )
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    table.add_column("What")
    table.add_column("Changed?")
    table.add_column("How much")
    table.add_column("How sure")
    table.add_column("What to do")
    for r in sorted(records, key=lambda r: (not r.drifted, -r.psi)):
        changed_text = Text("yes", style="bold red") if r.drifted else Text("no" if r.p_value is not None else "?")
        table.add_row(_what(r.feature), changed_text, _how_much(r), _how_sure(r), _what_to_do(r))
    return table


def render_drift(records: Sequence[DriftRecord], *, detailed: int | None = None) -> RenderableType:
    """A table per window, oldest first; with `detailed`, a line per window (`window_overview`) and tables for the
    `detailed` latest windows only."""
    ordered = sorted(records, key=lambda r: r.window)
    windows = [list(group) for _, group in groupby(ordered, key=lambda r: r.window)]
    if not windows:
        return Text("No drift windows closed yet.")
    if detailed is None or len(windows) <= detailed:
        return Group(*(drift_table(w) for w in windows))
    return Group(window_overview(ordered), *(drift_table(w) for w in windows[len(windows) - detailed :]))


def window_overview(records: Sequence[DriftRecord]) -> Table:
    """A line per window, oldest first: how many values it held and what changed (large changes first)."""
    table = Table(
        title="Drift, window by window: what no longer looks like the training data",
        caption="(large): PSI at or above its threshold. The latest window follows in detail.",
        title_justify="left",
        caption_justify="left",
    )
    for column in ("Window (UTC)", "Values", "Changed", "What changed"):
        table.add_column(column)
    for _, group in groupby(sorted(records, key=lambda r: r.window), key=lambda r: r.window):
        rows = list(group)
        changed = sorted((r for r in rows if r.drifted), key=lambda r: (not r.psi_exceeded, -r.psi))
        what = ", ".join(_what(r.feature) + (" (large)" if r.psi_exceeded else "") for r in changed)
        table.add_row(
            f"{rows[0].window_start:%Y-%m-%d %H:%M:%S} – {rows[0].window_end:%H:%M:%S}",
            f"{max(r.events for r in rows):,}",
            f"{len(changed)} of {len(rows)}",
            Text(what, style="red") if what else Text("nothing"),
        )
    return table


def _per_1000(value: float | None, digits: int = 2) -> str:
    return "n/a (declined outcomes not seen)" if value is None else f"{value:,.{digits}f}"


def _share(value: float | None) -> str:
    return "n/a (declined outcomes not seen)" if value is None else f"{100 * value:.2f} %"


def variants_table(record: ABRecord) -> Table:
    table = Table(
        title=f"Experiment {record.experiment_id} at {record.at:%Y-%m-%d %H:%M:%S} UTC — what each variant did",
        caption=(
            f"Counted: transactions at least {record.label_maturity_s:,.0f} s old, so their fraud labels have had "
            "time to arrive. 'n/a': the outcome of a declined transaction is never observed."
        ),
        title_justify="left",
        caption_justify="left",
    )
    for column in (
        "Variant",
        "Transactions",
        "Declined",
        "Fraud caught /1 000",
        "Fraud amount caught /1 000",
        "Fraud let through /1 000",
        "Good customers declined",
        "Declines that were fraud",
        "Fraud that was declined",
    ):
        table.add_column(column, justify="left" if column == "Variant" else "right")
    for v in record.variants:
        table.add_row(*_variant_row(v))
    return table


def _variant_row(v: VariantMetrics) -> list[str]:
    return [
        v.variant,
        f"{v.units:,}",
        _share(v.decline_rate),
        _per_1000(v.fraud_caught_per_1000),
        _per_1000(v.fraud_amount_caught_per_1000, 0),
        _per_1000(v.fraud_missed_per_1000),
        _share(v.false_decline_rate),
        _share(v.precision),
        _share(v.recall),
    ]


def _verdict_words(c: Comparison, record: ABRecord) -> tuple[Text, str]:
    if record.srm.alarm:
        return Text("don't trust", style="bold red"), (
            "The traffic split is off (see below): find why units go missing before reading any result."
        )
    if not c.observable:
        return Text("can't tell", style="yellow"), (
            "This metric needs the outcome of declined transactions, which is not observed here."
        )
    if c.verdict == "better":
        return Text(f"{c.variant} is better", style="bold green"), (
            f"Consider promoting {c.variant} (check the good customers it declines first)."
        )
    if c.verdict == "worse":
        return Text(f"{c.variant} is worse", style="bold red"), f"Stop sending traffic to {c.variant}."
    return Text("not sure yet"), "Keep the experiment running; looking at it as often as you like is fine."


def comparisons_table(record: ABRecord) -> Table:
    words = METRIC_WORDS[record.metric]
    table = Table(
        title=f"Is the challenger better? Compared on {words}",
        caption=(
            "The range holds the true difference with the stated certainty at every moment, however often this "
            "page is looked at (always-valid: the chance of a wrong 'better' or 'worse' stays below 1 − certainty)."
        ),
        title_justify="left",
        caption_justify="left",
    )
    for column in ("Variant vs baseline", "Difference", "Likely between", "Certainty", "Verdict", "What to do"):
        table.add_column(column)
    for c in record.comparisons:
        verdict, todo = _verdict_words(c, record)
        tested = c.looks > 0
        table.add_row(
            f"{c.variant} vs {c.baseline}",
            f"{1000 * c.difference:+.2f} per 1 000" if tested else "—",
            f"{1000 * c.ci_low:+.2f} to {1000 * c.ci_high:+.2f}" if tested else "not enough units yet",
            f"{100 * (1 - c.alpha):g} % (p = {c.p_value:.2g})",
            verdict,
            todo,
        )
    return table


def srm_text(record: ABRecord) -> Text:
    s = record.srm
    observed = sum(s.observed.values())
    split = ", ".join(
        f"{name} {100 * share:.1f} % expected / {(100 * s.observed[name] / observed if observed else 0.0):.1f} % seen"
        for name, share in s.expected_share.items()
    )
    if s.alarm:
        extra = f"; unexpected variants: {', '.join(s.unexpected)}" if s.unexpected else ""
        return Text(
            f"Traffic split is OFF ({split}; chance of this by luck p = {s.p_value:.2g} < {s.alpha}{extra}).",
            style="bold red",
        )
    return Text(f"Traffic split OK ({split}; p = {s.p_value:.2g}).")


def render_ab(records: Sequence[ABRecord]) -> RenderableType:
    """The latest look of each experiment."""
    latest: dict[str, ABRecord] = {}
    for r in records:
        if r.experiment_id not in latest or r.at >= latest[r.experiment_id].at:
            latest[r.experiment_id] = r
    parts: list[RenderableType] = []
    for r in latest.values():
        parts += [variants_table(r), comparisons_table(r), srm_text(r)]
    return Group(*parts) if parts else Text("No A/B looks yet.")


# --- operating points ------------------------------------------------------------------------------------

_SOURCE_WORDS = {
    "model": "its version's own operating point (chosen by training on the validation split)",
    "override": "the scorer's override (SCORER_REVIEW_THRESHOLD / SCORER_DECLINE_THRESHOLD), not its version's own",
    "default": "the defaults 0.3 / 0.7: its version was registered without an operating point",
}


def _pct(value: float) -> str:
    return f"{100 * value:.2g} %" if value < 0.01 else f"{100 * value:.1f} %" if value < 0.1 else f"{100 * value:.0f} %"


def _bands(review: float | None, decline: float | None) -> str:
    declines = "declines nothing" if decline is None else f"declines at score ≥ {decline:.4g}"
    reviews = "reviews nothing" if review is None else f"reviews from {review:.4g}"
    return f"{declines}, {reviews}"


def operating_point_words(view: OperatingPointView) -> str:
    """E.g. `champion (v3) declines at score ≥ 0.83, reviews from 0.41 — its version's own operating point ...`."""
    who = f"{view.variant} (v{view.version}{', shadow' if view.shadow else ''})"
    if view.source is None:
        return f"{who}: its scores do not say which thresholds decided them (written before thresholds were recorded)."
    return f"{who} {_bands(view.review, view.decline)} — {_SOURCE_WORDS[view.source]}."


def test_split_words(view: OperatingPointView) -> str:
    """What the version's own operating point did on its test split, from its registry tags."""
    if view.problem:
        return f"Unknown: {view.problem}"
    t = view.test
    if not {"decline_fpr", "decline_recall"} <= set(t):
        return "Not recorded: the version was registered before training measured its operating point."
    own = view.own
    if own is not None and (own.review, own.decline) != (view.review, view.decline):
        prefix = f"Its own point ({_bands(own.review, own.decline)}) — not what decides now —"
    else:
        prefix = "That"
    words = (
        f"{prefix} declines {_pct(t['decline_fpr'])} of good customers and stops {_pct(t['decline_recall'])} of fraud"
    )
    if "decline_amount_recall" in t:
        words += f" ({_pct(t['decline_amount_recall'])} of the fraud amount)"
    if "decline_rate" in t:
        words += f"; {_pct(t['decline_rate'])} of all transactions declined"
    if "decline_precision" in t and t.get("decline_rate", 1.0) > 0:
        words += f", {_pct(t['decline_precision'])} of them fraud"
    return words + "."


def traffic_words(metrics: VariantMetrics | None, maturity_s: float | None) -> str:
    """What the variant did in the traffic, from the monitor's latest A/B look (matured labels only)."""
    if metrics is None or metrics.units == 0 or metrics.decline_rate is None:
        return "No matured transactions of this variant in the latest A/B look yet."
    words = f"Declined {_pct(metrics.decline_rate)} of {metrics.units:,} transactions"
    if maturity_s is not None:
        words += f" at least {maturity_s:,.0f} s old"
    if metrics.false_decline_rate is None or metrics.recall is None:
        return words + "; precision and recall need the outcomes of declined transactions, which are not observed."
    words += f": {_pct(metrics.false_decline_rate)} of good customers declined, {_pct(metrics.recall)} of fraud stopped"
    if metrics.precision is not None:
        words += f", {_pct(metrics.precision)} of declines were fraud"
    return words + "."


def operating_points_table(views: Sequence[OperatingPointView], ab: Sequence[ABRecord] = ()) -> RenderableType:
    """Per variant: the thresholds that decide its scores, what they did on its version's test split (training),
    and what the traffic shows (the latest A/B look that has the variant)."""
    if not views:
        return Text("No scores read: the operating points are unknown.")
    latest: dict[str, tuple[VariantMetrics, ABRecord]] = {}
    for record in sorted(ab, key=lambda r: r.at):
        for metrics in record.variants:
            latest[metrics.variant] = (metrics, record)
    table = Table(
        title="Operating points: when each variant declines, and what that costs",
        caption=(
            "Test split: the version's own figures, measured by training on data it never saw. Traffic: the monitor's "
            "latest A/B look; with few matured frauds these move a lot."
        ),
        title_justify="left",
        caption_justify="left",
    )
    for column in ("Variant", "Decides with", "On the test split", "In the traffic"):
        table.add_column(column)
    for view in views:
        seen = latest.get(view.variant)
        table.add_row(
            f"{view.variant} v{view.version}" + (" (shadow)" if view.shadow else ""),
            operating_point_words(view),
            test_split_words(view),
            traffic_words(seen[0] if seen else None, seen[1].label_maturity_s if seen else None),
        )
    return table


def render(
    drift: Sequence[DriftRecord],
    ab: Sequence[ABRecord],
    *,
    detailed: int | None = None,
    operating_points: Sequence[OperatingPointView] | None = None,
) -> RenderableType:
    """Everything `streamscore report` shows: drift windows (`detailed`: see render_drift), then experiments, then
    (when given) each variant's operating point."""
    parts = [render_drift(drift, detailed=detailed), render_ab(ab)]
    if operating_points is not None:
        parts.append(operating_points_table(operating_points, ab))
    return Group(*parts)
