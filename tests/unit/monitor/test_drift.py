"""Drift statistics against scipy and known answers; window state merged from partitions equals one pass."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy import stats

from monitor.drift import (
    DriftWindow,
    apportion,
    categorical_test,
    category_counts,
    evaluate,
    ks,
    ks_statistic,
    mixed_rows,
    psi,
    window_bounds,
    window_key,
)
from monitor.reference import DriftReference, Kind, SeriesReference, drift_reference, series_reference
from monitor.settings import CATEGORICAL_FEATURES, MonitorSettings
from monitor.simulation import synthetic_features, synthetic_reference
from streamscore.features import FEATURE_NAMES


def one_series(sample: np.ndarray, kind: Kind = "continuous", edges: list[float] | None = None) -> SeriesReference:
    e = edges if edges is not None else [float(np.nanmedian(sample))]
    idx = np.searchsorted(e, sample, side="left")
    shares = np.bincount(idx, minlength=len(e) + 1) / len(sample)
    return series_reference("x", kind, {"edges": e, "shares": shares.tolist()}, sample.tolist())


def counted(ref: SeriesReference, values: np.ndarray) -> DriftWindow:
    window = DriftWindow(DriftReference((ref,)), 0)
    window.add(ref.name, values)
    return window


# --- KS ----------------------------------------------------------------------------------------------------


def draw_case(rng: np.random.Generator, kind: int, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    if kind == 0:  # continuous, a small shift
        return rng.normal(size=m), rng.normal(rng.normal(0, 0.15), 1, size=n)
    if kind == 1:  # counts: many ties across both samples
        return rng.poisson(2, size=m).astype(float), rng.poisson(2.2, size=n).astype(float)
    # coarse reference grid, finer window values: window values strictly between reference points
    return np.round(rng.normal(size=m), 1), np.round(rng.normal(0.05, 1, size=n), 3)


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_ks_from_cell_counts_equals_scipy_on_the_raw_values(kind: int) -> None:
    rng = np.random.default_rng(100 + kind)
    sizes = [(2000, 1000), (2000, 1), (7, 5), (2000, 10_000), (2000, 10_001), (1500, 23_456), (3, 4000)]
    for m, n in sizes + [(int(rng.integers(2, 3000)), int(rng.integers(1, 12_000))) for _ in range(15)]:
        reference, window = draw_case(rng, kind, m, n)
        ref = one_series(reference)
        d, p = ks(ref, counted(ref, window).cells[0])
        expected = stats.ks_2samp(window, reference)
        assert d == pytest.approx(float(expected.statistic), abs=1e-12), (m, n)
        assert p == pytest.approx(float(expected.pvalue), rel=1e-12, abs=1e-300), (m, n)


def test_ks_statistic_is_vectorized_over_windows() -> None:
    rng = np.random.default_rng(7)
    ref = one_series(rng.normal(size=500))
    windows = [counted(ref, rng.normal(0.1 * i, 1, size=300)).cells[0] for i in range(4)]
    batch = ks_statistic(ref, np.stack(windows))
    assert batch.shape == (4,)
    assert batch.tolist() == [float(ks_statistic(ref, w)) for w in windows]


def test_ks_ignores_non_finite_values_and_counts_them_missing() -> None:
    rng = np.random.default_rng(8)
    reference = rng.normal(size=400)
    ref = one_series(np.append(reference, np.nan))
    values = np.append(rng.normal(size=300), [np.nan, np.nan])
    window = counted(ref, values)
    assert int(window.missing[0]) == 2
    assert ks(ref, window.cells[0]) == pytest.approx(
        tuple(stats.ks_2samp(values[np.isfinite(values)], reference)[:2]), rel=1e-12
    )
    # Training bins a NaN in the last bin (searchsorted sorts NaN last); so does the window.
    assert int(window.bins[0][-1]) == int((values[np.isfinite(values)] > ref.edges[-1]).sum()) + 2


# --- PSI ---------------------------------------------------------------------------------------------------


def test_psi_known_answer_and_floors() -> None:
    # q = (0.5, 0.3, 0.2) against p = (0.4, 0.4, 0.2): 0.1·ln(1.25) + 0.1·ln(4/3)
    assert psi([50, 30, 20], [0.4, 0.4, 0.2]) == pytest.approx(0.1 * math.log(1.25) + 0.1 * math.log(4 / 3), rel=1e-12)
    assert psi([10, 20, 30], [1 / 6, 2 / 6, 3 / 6]) == pytest.approx(0.0, abs=1e-15)
    # An empty bin on either side: floored at epsilon, large but finite.
    value = psi([0, 100], [0.5, 0.5], epsilon=1e-4)
    assert math.isfinite(value)
    assert value == pytest.approx((1e-4 - 0.5) * math.log(1e-4 / 0.5) + 0.5 * math.log(2), rel=1e-12)
    assert math.isfinite(psi([0, 0, 100], [0.0, 0.3, 0.7]))
    assert psi([0, 0], [0.5, 0.5]) == 0.0


# --- χ² ----------------------------------------------------------------------------------------------------


def test_categorical_tests_are_two_sample_and_equal_scipys() -> None:
    # A flag: Fisher's exact test of the window's counts against the reference rows' counts.
    test, gap, p = categorical_test(np.array([990, 10]), np.array([1994, 6]))
    assert test == "fisher"
    assert gap == pytest.approx(abs(10 / 1000 - 6 / 2000))
    assert p == float(stats.fisher_exact([[990, 10], [1994, 6]]).pvalue)
    # Three well-filled categories: χ² of homogeneity (no continuity correction).
    window, reference = np.array([300, 400, 300]), np.array([500, 1000, 500])
    test, statistic, p = categorical_test(window, reference)
    expected = stats.chi2_contingency(np.stack([window, reference]), correction=False)
    assert (test, statistic, p) == ("chi2", float(expected.statistic), float(expected.pvalue))
    # A category the reference never had, few values: Bonferroni over the one-against-the-rest Fisher tests.
    test, _, p = categorical_test(np.array([900, 97, 3]), np.array([1800, 200, 0]))
    assert test == "fisher"
    assert p == pytest.approx(min(1.0, 3 * float(stats.fisher_exact([[3, 997], [0, 2000]]).pvalue)))
    # Empty categories on both sides are dropped; one category left: nothing to test.
    assert categorical_test(np.array([0, 100, 0]), np.array([0, 2000, 0])) == ("fisher", 0.0, 1.0)


@pytest.mark.parametrize("share", [0.004, 0.3, 0.95])
def test_a_flags_psi_is_on_its_categories_whatever_its_share(share: float) -> None:
    """A flag that is 1 in 95 % of rows has training deciles all 1 (edges [1.0], one bin holding both values): its
    PSI was always 0. Its categories are its PSI bins, from training's shares when the document lists them, else
    from the sample's."""
    rng = np.random.default_rng(4)
    sample = (rng.random(2000) < share).astype(float)
    edges = sorted({float(v) for v in np.quantile(sample, np.linspace(0, 1, 11)[1:-1])})
    shares = np.bincount(np.searchsorted(edges, sample, side="left"), minlength=len(edges) + 1) / len(sample)
    old = {"edges": edges, "shares": shares.tolist()}
    new = {**old, "categories": {"values": [0.0, 1.0], "shares": [1 - share, share]}}
    settings = MonitorSettings(window="events", window_events=1000, false_alarm_windows=20)
    for block in (old, new):
        ref = series_reference("flag", "categorical", block, sample.tolist())
        assert ref.points.tolist() == [0.0, 1.0]
        assert ref.category_shares is not None
        gone = evaluate(counted(ref, np.zeros(1000)), settings)[0]
        # The flag gone: large for a common flag; for a 0.4 % one, PSI's own scale calls it small, but not 0.
        assert gone.psi > (settings.psi_threshold if share > 0.1 else 0.01)
        assert gone.test == "fisher"
        assert gone.drifted or share < 0.1
    shares_new = series_reference("flag", "categorical", new, sample.tolist()).category_shares
    assert shares_new is not None
    assert shares_new.tolist() == pytest.approx([1 - share, share, 0.0])


def test_a_flag_mostly_one_and_a_new_value() -> None:
    rng = np.random.default_rng(4)
    sample = (rng.random(2000) < 0.95).astype(float)
    ref = one_series(sample, "categorical", edges=[1.0])
    settings = MonitorSettings(window="events", window_events=1000, false_alarm_windows=20)
    same = evaluate(counted(ref, (rng.random(1000) < 0.95).astype(float)), settings)[0]
    moved = evaluate(counted(ref, (rng.random(1000) < 0.85).astype(float)), settings)[0]
    assert same.test == "fisher"
    assert not same.drifted
    assert moved.drifted
    assert moved.psi > same.psi
    # A value never seen in the reference is a category of its own (the cells between reference points).
    values = np.r_[np.ones(900), np.full(100, 2.0)]
    assert category_counts(ref, counted(ref, values).cells[0]).tolist() == [0, 900, 100]
    new_value = evaluate(counted(ref, values), settings)[0]
    assert new_value.drifted
    assert new_value.statistic is not None
    assert math.isfinite(new_value.statistic)
    assert math.isfinite(new_value.psi)


# --- precision -----------------------------------------------------------------------------------------------


def test_window_values_are_compared_at_the_models_precision() -> None:
    """The reference holds float32 values (training's matrices); the scorer attaches float64 ones. log1p of a
    count is not a float32: unrounded, every tied value fell between two reference points."""
    counts = np.random.default_rng(12).poisson(0.5, size=3000).astype(float)
    values = np.log1p(counts)
    ref = one_series(values[:2000].astype(np.float32).astype(np.float64))
    live = values[2000:]
    vectorized = counted(ref, live)
    one_by_one = DriftWindow(DriftReference((ref,)), 0)
    for v in live:
        one_by_one.add_features({"x": float(v)}, 0.0)
    assert vectorized.cells[0].tolist() == one_by_one.cells[0].tolist()
    assert vectorized.bins[0].tolist() == one_by_one.bins[0].tolist()
    assert int(vectorized.cells[0][0::2].sum()) == 0  # every value at a reference point
    record = evaluate(vectorized, MonitorSettings(window="events", window_events=1000))[0]
    assert record.statistic is not None
    assert record.statistic < 0.1
    assert not record.drifted
    # Beyond float32's range: ±inf, as the scorer's cast, so missing on both paths.
    one_by_one.add_features({"x": 1e300}, 0.0)
    assert int(one_by_one.missing[0]) == 1


# --- time of day -----------------------------------------------------------------------------------------------


def test_apportion_is_proportional_and_exact() -> None:
    assert apportion(10, np.array([1, 1, 1])).tolist() == [4, 3, 3]
    assert apportion(7, np.array([0, 5, 2])).tolist() == [0, 5, 2]
    weights = np.array([130, 270, 301, 299])
    parts = apportion(83, weights)
    assert int(parts.sum()) == 83
    assert np.all(np.abs(parts - 83 * weights / 1000) < 1)
    assert apportion(0, np.array([3, 4])).tolist() == [0, 0]


def test_the_reference_rows_are_redrawn_to_the_windows_hours() -> None:
    rng = np.random.default_rng(13)
    times = rng.uniform(0, 86_400, size=2000)
    hour = (times // 3600).astype(int)
    sample = hour + rng.random(2000)  # the value says the hour: a daily rhythm at its strongest
    edges = [float(v) for v in np.quantile(sample, np.linspace(0, 1, 11)[1:-1])]
    block = {"edges": edges, "shares": [0.1] * 10}
    ref = series_reference("x", "continuous", block, sample.tolist(), times=times.tolist(), strata=24)
    # A window in hours 13 and 14, twice as many values in 14.
    strata = np.zeros(24, dtype=np.int64)
    strata[13], strata[14] = 100, 200
    rows = mixed_rows(ref, strata, 300)
    assert rows is not None
    drawn = np.floor(ref.sample[rows]).astype(int)
    n13, n14 = int((drawn == 13).sum()), int((drawn == 14).sum())
    assert n13 + n14 == int(rows.sum())
    assert abs(n14 - 2 * n13) <= 1
    assert n14 == int((hour == 14).sum()) or n13 == int((hour == 13).sum())  # as many as the sample can give
    # Values not all accounted for by strata (events added without times): the whole sample.
    assert mixed_rows(ref, strata, 301) is None
    # Values in an hour the sample has no row of: no rows to compare with (the series is reported untested).
    night = series_reference("x", "continuous", block, sample.tolist(), times=(times % 3600).tolist(), strata=24)
    empty = mixed_rows(night, strata, 300)
    assert empty is not None
    assert not empty.any()
    # A window of hours 13-14 is not drift against the same hours; against the whole sample it is.
    window = DriftWindow(DriftReference((ref,)), 0)
    t = np.r_[rng.uniform(13 * 3600, 14 * 3600, 500), rng.uniform(14 * 3600, 15 * 3600, 1000)] + 86_400 * 20_000
    window.add("x", (t % 86_400) // 3600 + rng.random(1500), t)
    assert window.strata[0][13] == 500
    settings = MonitorSettings(window="events", window_events=1500)
    record = evaluate(window, settings)[0]
    assert record.hour_mixed
    assert not record.drifted
    assert 100 < record.reference_rows < 2000
    window.strata[0][:] = 0
    unmixed = evaluate(window, settings)[0]
    assert not unmixed.hour_mixed
    assert unmixed.reference_rows == 2000
    assert unmixed.drifted


# --- windows, evaluation -----------------------------------------------------------------------------------


def test_window_keys_and_bounds() -> None:
    hourly = MonitorSettings(window="time", window_seconds=3600)
    t = datetime(2026, 3, 1, 13, 59, 59, tzinfo=UTC).timestamp()
    key = window_key(hourly, t)
    assert window_key(hourly, t + 1) == key + 1
    assert window_bounds(hourly, key) == (
        datetime(2026, 3, 1, 13, tzinfo=UTC),
        datetime(2026, 3, 1, 14, tzinfo=UTC),
    )
    counts = MonitorSettings(window="events", window_events=1000)
    assert [window_key(counts, 0.0, i) for i in (0, 999, 1000, 2500)] == [0, 0, 1, 2]
    assert window_bounds(counts, 3) is None
    with pytest.raises(ValueError, match="ordinal"):
        window_key(counts, 0.0)


def test_a_series_with_too_few_values_is_reported_untested_and_left_out_of_the_family() -> None:
    rng = np.random.default_rng(5)
    specs = synthetic_features(3)
    reference = synthetic_reference(specs, rng, train_rows=5000, sample_rows=500)
    window = DriftWindow(reference, 0)
    window.add(specs[0].name, specs[0].draw(rng, 500, shift=1.0))
    window.add(specs[1].name, specs[1].draw(rng, 50))
    settings = MonitorSettings(window="events", window_events=500, min_window_events=100)
    first, second, third = evaluate(window, settings)
    assert first.drifted
    assert first.tested == 1
    assert first.threshold == pytest.approx(settings.drift_alpha)
    assert (second.test, second.p_value, second.drifted, second.events) == (None, None, False, 50)
    assert third.events == 0
    assert not third.drifted


def test_evaluate_applies_the_correction_across_the_window() -> None:
    rng = np.random.default_rng(6)
    specs = synthetic_features(12)
    reference = synthetic_reference(specs, rng, train_rows=10_000, sample_rows=2000)
    window = DriftWindow(reference, 0)
    for i, spec in enumerate(specs):
        window.add(spec.name, spec.draw(rng, 1000, shift=0.3 if i in (0, 3) else 0.0))
    for method in ("bh", "bonferroni"):
        settings = MonitorSettings(window="events", window_events=1000, false_alarm_windows=20, correction=method)
        records = evaluate(window, settings)
        p = [r.p_value for r in records]
        assert all(v is not None for v in p)
        cut = records[0].threshold
        assert cut is not None
        assert {r.threshold for r in records} == {cut}
        if method == "bonferroni":
            assert cut == pytest.approx(0.05 / 12)
        assert [r.drifted for r in records] == [v is not None and v <= cut for v in p]
        assert records[0].drifted
        assert records[3].drifted
        assert all(r.alpha == 0.05 and r.correction == method and r.tested == 12 for r in records)


def test_partition_states_merge_into_the_one_pass_result() -> None:
    """A stream split across 6 partitions, each partition's window states serialized (a changelog) and merged,
    gives the same records as one pass over the stream — time windows and count windows."""
    rng = np.random.default_rng(9)
    specs = synthetic_features(6)
    features = synthetic_reference(specs, rng, train_rows=5000, sample_rows=800)
    score_sample = rng.beta(0.5, 8, size=800)
    # The score's reference knows its rows' times of day: the windows' strata merge and mix it by their hours.
    e = [float(np.median(score_sample))]
    block = {"edges": e, "shares": (np.bincount(np.searchsorted(e, score_sample), minlength=2) / 800).tolist()}
    score_ref = series_reference(
        "score:champion",
        "continuous",
        block,
        score_sample.tolist(),
        times=rng.uniform(0, 86_400, 800).tolist(),
        strata=24,
    )
    reference = DriftReference((*features.series, score_ref))
    n = 4000
    times = np.sort(rng.uniform(1_700_000_000, 1_700_000_000 + 3 * 3600, size=n))
    columns = {s.name: s.draw(rng, n) for s in specs}
    scores = rng.beta(0.6, 8, size=n)
    partition = rng.integers(0, 6, size=n)

    for settings in (
        MonitorSettings(window="time", window_seconds=3600, min_window_events=50),
        MonitorSettings(window="events", window_events=1500, min_window_events=50),
    ):
        keys = np.array([window_key(settings, float(t), i) for i, t in enumerate(times)])
        single: dict[int, DriftWindow] = {}
        for k in np.unique(keys):
            w = single[int(k)] = DriftWindow(reference, int(k))
            rows = keys == k
            for name, values in columns.items():
                w.add(name, values[rows], times[rows])
            w.add("score:champion", scores[rows], times[rows])
        merged: dict[int, DriftWindow] = {}
        for p in range(6):
            states: dict[int, DriftWindow] = {}
            for i in np.flatnonzero(partition == p):  # event by event, as a Faust agent sees them
                k = int(keys[i])
                w = states.setdefault(k, DriftWindow(reference, k))
                w.add_features({name: float(values[i]) for name, values in columns.items()}, float(times[i]))
                w.add_score("champion", float(scores[i]), float(times[i]))
                w.add_score("shadow-without-reference", 0.5, float(times[i]))
            for k, w in states.items():
                restored = DriftWindow.from_dict(reference, json.loads(json.dumps(w.to_dict())))
                merged[k] = merged[k].merge(restored) if k in merged else restored
        assert merged.keys() == single.keys()
        assert len(single) >= 3
        for k in single:
            records = evaluate(merged[k], settings)
            assert records == evaluate(single[k], settings)
            assert records[-1].hour_mixed
            assert records[-1].reference_rows < 800


def test_reference_from_trainings_document() -> None:
    """The monitor reads reference.json exactly as training writes it (after a JSON round trip)."""
    from training.registry import build_reference

    rng = np.random.default_rng(10)
    n = 3000
    x = rng.normal(size=(n, len(FEATURE_NAMES)))
    for name in CATEGORICAL_FEATURES:
        x[:, FEATURE_NAMES.index(name)] = rng.random(n) < 0.2
    ts = rng.uniform(1.7e9, 1.7e9 + 10 * 86_400, size=n)
    document = json.loads(
        json.dumps(build_reference(x, rng.random(n), feature_service="svc", seed=1, sample_size=1000, event_ts=ts))
    )
    reference = drift_reference(document, {"champion": document}, categorical=CATEGORICAL_FEATURES)
    assert reference.names == (*FEATURE_NAMES, "score:champion")
    kinds = {s.name: s.kind for s in reference.series}
    assert {n for n, k in kinds.items() if k == "categorical"} == set(CATEGORICAL_FEATURES)
    assert all(s.category_strata_shares is not None for s in reference.series if s.kind == "categorical")
    assert all(len(s.sample) == 1000 and s.strata == 24 and s.strata_shares is not None for s in reference.series)
    # The sample holds float32 values: a float64 input rounds onto them.
    amount = reference.series[0]
    assert np.array_equal(amount.sample, amount.sample.astype(np.float32).astype(np.float64))
    # A document without times (schema 1, or built without event_ts) is read as before: no strata, no mixing.
    old = json.loads(json.dumps(build_reference(x, rng.random(n), feature_service="svc", seed=1, sample_size=1000)))
    del old["precision"]
    old["schema_version"] = 1
    assert all(s.strata == 0 for s in drift_reference(old, {"champion": old}, categorical=CATEGORICAL_FEATURES).series)
    with pytest.raises(ValueError, match="not in the reference"):
        drift_reference(document, {}, categorical=["no_such_feature"])


def test_rows_added_at_once_count_exactly_as_one_event_at_a_time() -> None:
    """`add_rows` (the monitor's buffered path) against `add_features` per event, on features shaped like ours with
    ties at the reference's points, values on bin edges, NaN, ±inf, beyond float32, series a row lacks, names outside
    the reference, and the time-of-day strata."""
    rng = np.random.default_rng(31)
    specs = synthetic_features(12)
    reference = synthetic_reference(specs, rng, train_rows=5_000, sample_rows=500)
    n = 3_000
    columns = {spec.name: spec.draw(rng, n) for spec in specs}
    first = reference.series[0]
    columns[first.name][:40] = first.edge_list[0]  # on an edge
    columns[first.name][40:80] = first.point_list[3]  # on a reference point
    awkward = [math.nan, math.inf, -math.inf, 1e300, -1e300]
    times = 1_800_000_000.0 + np.sort(rng.uniform(0, 86_400 * 2, n))
    rows: list[dict[str, float]] = []
    for i in range(n):
        row = {name: float(values[i]) for name, values in columns.items()}
        if i % 97 == 0:
            row[specs[1].name] = awkward[i % len(awkward)]
        if i % 13 == 0:
            del row[specs[2].name]
        row["not_in_the_reference"] = 1.0
        rows.append(row)
    one_by_one = DriftWindow(reference, 0)
    for row, t in zip(rows, times, strict=True):
        one_by_one.add_features(row, float(t))
    at_once = DriftWindow(reference, 0)
    at_once.add_rows(rows[:1000], times[:1000].tolist())
    at_once.add_rows(rows[1000:], times[1000:].tolist())
    at_once.add_rows([], [])
    assert at_once.to_dict() == one_by_one.to_dict()
    assert int(one_by_one.missing[reference.index(specs[1].name)]) > 0
    with pytest.raises(ValueError, match="event times"):
        at_once.add_rows(rows[:2], [0.0])
