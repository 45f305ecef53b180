"""`python -m bench.statistics`: the monitor's statistics validated by large seeded simulations — the unit tests'
harnesses (`monitor.simulation`) with 10–20× the runs, plus the scan that chose the mSPRT's τ.

1. τ scan: A/A false-positive rate and power (2 % vs 2.5 %) by 30 000 and 40 000 units per arm, 100 looks.
2. A/A with continuous peeking at the chosen τ: 2 %, 100 looks up to 40 000 units per arm; the naive z-test in
   the same harness (negative control); the always-valid interval's misses; also a 0.2 % base rate and a
   90/10 split.
3. Power: 2 % vs 2.5 %, detection by 30 000 units per arm, and the median units per arm at detection.
4. Delayed labels: a canary ramped from 5 % to 50 % with no true effect; matured units only vs every scored unit.
5. Sample ratio: a 50.5/49.5 split at 100 000 and 1 000 000 units; false alarms of the χ² check under the
   configured split at one look and when checked at 100 looks.
6. Drift: stationary windows (30 features, 1 000 rows), any alarm per window with BH, Bonferroni and no
   correction, at α = 0.05 and 0.01 per window; detection of 0.1, 0.15, 0.2 and 0.3 standard-deviation shifts.
7. Realistic drift: mixed inputs (counts with 70–95 % zeros, log1p of a count, a rate k/m, flags at 0.4–95 %,
   heavy tails, the hour) with a daily rhythm against a float32 reference of 2 000 rows, windows of 100, 1 000
   and 10 000 rows over 1 or 4 hours: any alarm per window at α = 0.01 and 0.05, and the three negative controls.

Results: a rich table per section on the terminal and a JSON file (`--out`); docs/monitor.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

from monitor.settings import MonitorSettings
from monitor.simulation import (
    delayed_labels,
    peeking,
    realistic_drift,
    shift_detection,
    standard_error,
    stationary_drift,
)
from monitor.srm import srm

TAUS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.02, 0.05)
CHOSEN_TAU = MonitorSettings.model_fields["msprt_tau"].default
ALPHA = 0.05
SECTIONS = ["tau_scan", "aa", "power", "delayed_labels", "sample_ratio", "drift", "realistic"]


def timed(console: Console, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    result = fn()
    result["seconds"] = round(time.perf_counter() - start, 1)
    console.log(f"{name}: {result['seconds']} s")
    return result


def tau_scan(runs: int) -> dict[str, Any]:
    rows = []
    for i, tau in enumerate(TAUS):
        aa = peeking(0.02, 0.02, runs=runs, tau=tau, alpha=ALPHA, seed=1000 + i)
        ab = peeking(0.02, 0.025, runs=runs, tau=tau, alpha=ALPHA, seed=2000 + i)
        rows.append(
            {
                "tau": tau,
                "aa_false_positive_rate": aa.msprt_rate(),
                "power_by_30000": ab.msprt_rate(30_000, direction=+1),
                "power_by_40000": ab.msprt_rate(40_000, direction=+1),
            }
        )
    return {"runs": runs, "rows": rows}


def aa(runs: int) -> dict[str, Any]:
    cases = {
        "2 %, 50/50": {"rate": 0.02, "share_b": 0.5},
        "0.2 %, 50/50": {"rate": 0.002, "share_b": 0.5},
        "2 %, 90/10": {"rate": 0.02, "share_b": 0.1},
    }
    rows = []
    for i, (name, case) in enumerate(cases.items()):
        r = peeking(case["rate"], case["rate"], runs=runs, tau=CHOSEN_TAU, share_b=case["share_b"], seed=3000 + i)
        rows.append(
            {
                "case": name,
                "msprt_false_positive_rate": r.msprt_rate(),
                "bound": ALPHA + 2 * standard_error(ALPHA, runs),
                "naive_z_false_positive_rate": r.naive_rate(),
                "interval_miss_rate": float(r.ci_miss.mean()),
            }
        )
    return {"runs": runs, "looks": 100, "max_units_per_arm": 40_000, "tau": CHOSEN_TAU, "rows": rows}


def power(runs: int) -> dict[str, Any]:
    r = peeking(0.02, 0.025, runs=runs, tau=CHOSEN_TAU, seed=4000)
    caught = (r.msprt_first >= 0) & (r.msprt_direction > 0)
    at = r.units[r.msprt_first[caught]]
    return {
        "runs": runs,
        "tau": CHOSEN_TAU,
        "power_by_20000": r.msprt_rate(20_000, +1),
        "power_by_30000": r.msprt_rate(30_000, +1),
        "power_by_40000": r.msprt_rate(40_000, +1),
        "wrong_direction": r.msprt_rate(40_000, -1),
        "median_units_per_arm_at_detection": float(np.median(at)) if at.size else None,
        "interval_miss_rate": float(r.ci_miss.mean()),
    }


def labels(runs: int) -> dict[str, Any]:
    r = delayed_labels(runs=runs, tau=CHOSEN_TAU, seed=5000)
    return {"runs": runs, "matured_only": r.matured_rate, "every_scored_unit": r.naive_rate}


def sample_ratio(runs: int) -> dict[str, Any]:
    split = {"a": 0.5, "b": 0.5}
    big = srm({"a": 505_000, "b": 495_000}, split)
    small = srm({"a": 50_500, "b": 49_500}, split)
    rng = np.random.default_rng(6000)
    looks, per_look = 100, 1_000
    counts = np.cumsum(rng.multinomial(per_look, [0.9, 0.1], size=(runs, looks)), axis=1)
    n = per_look * np.arange(1, looks + 1)
    expected = np.stack([0.9 * n, 0.1 * n], axis=-1)
    p = stats.chisquare(counts, np.broadcast_to(expected, counts.shape), axis=-1).pvalue
    return {
        "p_at_1000000": big.p_value,
        "alarm_at_1000000": big.alarm,
        "p_at_100000": small.p_value,
        "alarm_at_100000": small.alarm,
        "runs": runs,
        "false_alarm_one_look": float((p[:, -1] < 0.001).mean()),
        "false_alarm_100_looks": float((p < 0.001).any(axis=1).mean()),
    }


def drift(references: int, windows: int, detection_runs: int) -> dict[str, Any]:
    rows = []
    for alpha_windows in (20, 100):
        runs = stationary_drift(
            [
                MonitorSettings(window="events", window_events=1000, false_alarm_windows=alpha_windows, correction=c)
                for c in ("bh", "bonferroni")
            ],
            references=references,
            windows_per_reference=windows,
            train_rows=20_000,
            seed=7000 + alpha_windows,
        )
        rows.append(
            {
                "alpha": 1 / alpha_windows,
                "windows": runs[0].windows,
                "bh": runs[0].any_alarm_corrected,
                "bonferroni": runs[1].any_alarm_corrected,
                "uncorrected": runs[0].any_alarm_uncorrected,
                "bound": 1 / alpha_windows + 2 * standard_error(1 / alpha_windows, runs[0].windows),
            }
        )
    detection = []
    for i, shift in enumerate((0.1, 0.15, 0.2, 0.3)):
        count = detection_runs if shift == 0.2 else max(detection_runs // 3, 50)
        bh, bonferroni = shift_detection(
            [
                MonitorSettings(window="events", window_events=1000, false_alarm_windows=20, correction=c)
                for c in ("bh", "bonferroni")
            ],
            runs=count,
            shift=shift,
            seed=8000 + i,
        )
        detection.append(
            {
                "shift_sd": shift,
                "runs": count,
                "bh_within_1": bh.caught_within[0],
                "bh_within_2": bh.caught_within[1],
                "bonferroni_within_1": bonferroni.caught_within[0],
                "bonferroni_within_2": bonferroni.caught_within[1],
                "bh_other_alarms": bh.other_alarms,
                "bonferroni_other_alarms": bonferroni.other_alarms,
            }
        )
    return {"stationary": rows, "detection": detection}


def realistic(references: int, windows: int) -> dict[str, Any]:
    runs = realistic_drift(
        [MonitorSettings(window="events", false_alarm_windows=w) for w in (100, 20)],
        references=references,
        windows_per_reference=windows,
        seed=9100,
    )
    rows = []
    for run, alpha in zip(runs, (0.01, 0.05), strict=True):
        rows.append(
            {
                "alpha": alpha,
                "windows": run.windows,
                "production": run.production,
                **{f"rows_{n}": rate for n, rate in run.by_rows.items()},
                "one_sample": run.one_sample,
                "one_sample_training": run.one_sample_training,
                "unrounded": run.unrounded,
                "no_mix": run.no_mix,
                "bound": alpha + 2 * standard_error(alpha, run.windows),
            }
        )
    return {"rows": rows, "series": [run.series for run in runs]}


def table(title: str, rows: Sequence[dict[str, Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for key in rows[0]:
        t.add_column(key, justify="right")
    for row in rows:
        t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    return t


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20_000, help="runs of the A/B simulations")
    parser.add_argument("--scan-runs", type=int, default=10_000, help="runs per τ of the scan")
    parser.add_argument("--references", type=int, default=1_000, help="references of the stationary drift run")
    parser.add_argument("--windows", type=int, default=5, help="windows per reference (few: they share a sample)")
    parser.add_argument("--detection-runs", type=int, default=1_000, help="runs of the 0.2 SD detection")
    parser.add_argument("--realistic-references", type=int, default=200, help="references of the realistic run")
    parser.add_argument("--realistic-windows", type=int, default=6, help="windows per reference (realistic run)")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=SECTIONS, help="sections to run")
    parser.add_argument("--out", type=Path, default=Path("bench/results/statistics.json"))
    args = parser.parse_args(argv)
    console = Console()
    started = time.perf_counter()
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "tau_scan": lambda: tau_scan(args.scan_runs),
        "aa": lambda: aa(args.runs),
        "power": lambda: power(args.runs),
        "delayed_labels": lambda: labels(args.runs),
        "sample_ratio": lambda: sample_ratio(args.runs),
        "drift": lambda: drift(args.references, args.windows, args.detection_runs),
        "realistic": lambda: realistic(args.realistic_references, args.realistic_windows),
    }
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpu": platform.processor()},
        "arguments": {k: str(v) for k, v in vars(args).items()},
    }
    for name in args.only:
        results[name] = timed(console, name, sections[name])
    results["seconds"] = round(time.perf_counter() - started, 1)
    if "tau_scan" in results:
        console.print(table(f"τ scan ({args.scan_runs} runs each)", results["tau_scan"]["rows"]))
    if "aa" in results:
        console.print(table(f"A/A, 100 looks, τ = {CHOSEN_TAU}", results["aa"]["rows"]))
    for key in ("power", "delayed_labels", "sample_ratio"):
        if key in results:
            console.print(table(key, [{"figure": k, "value": v} for k, v in results[key].items()]))
    if "drift" in results:
        console.print(table("drift: stationary windows, any alarm", results["drift"]["stationary"]))
        console.print(table("drift: detection of a shift in one of 30 features", results["drift"]["detection"]))
    if "realistic" in results:
        console.print(table("drift: realistic inputs, daily rhythm, any alarm", results["realistic"]["rows"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    console.log(f"wrote {args.out} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
