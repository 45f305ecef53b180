"""How fast the `streamscore` CLI answers `--help`: the cost of importing the CLI, which every command pays first.

`python -m bench.cli [--rounds 7] [--root PATH]`: runs `streamscore --help` and `streamscore <command> --help` for
every command and group (as the `streamscore` console script does it: `from streamscore_cli.main import main`) in a
fresh interpreter, `--rounds` times each, interleaved, and reports the median wall time of each, with a bare
interpreter (`python -c pass`) measured in the same rounds as the baseline the CLI cannot beat. `--root` measures
the CLI of another checkout (e.g. `git archive <commit> | tar -x -C /tmp/old`) with this interpreter, for a
before/after on the same machine and load. Writes bench/results/cli-<stamp>.json unless `--no-save`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENTRY = "from streamscore_cli.main import main; main()"
"""What the `streamscore` console script runs."""
BASELINE = "bare python"


def command_paths() -> list[tuple[str, ...]]:
    """Every command and group of the CLI, as argument tuples (the root first)."""
    import typer

    from streamscore_cli.main import app

    paths: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        paths.append(path)
        children = getattr(command, "commands", {})  # a group (typer vendors its own click)
        for name in sorted(children):
            walk(children[name], (*path, name))

    walk(typer.main.get_command(app), ())
    return paths


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the checkout measured is the working directory, nothing else
    env["COLUMNS"] = "120"
    return env


def time_once(argv: list[str], root: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:]) or argv} exited {result.returncode}: {result.stderr[-2000:]}")
    return elapsed


def measure(paths: list[tuple[str, ...]], rounds: int, root: Path) -> dict[str, list[float]]:
    """Wall seconds per command, the rounds interleaved so that a busy moment of the machine spreads over all."""
    env = _environment()
    argvs = {BASELINE: [sys.executable, "-c", "pass"]}
    for path in paths:
        argvs[" ".join(("streamscore", *path, "--help"))] = [sys.executable, "-c", ENTRY, *path, "--help"]
    times: dict[str, list[float]] = {name: [] for name in argvs}
    for argv in argvs.values():  # one unmeasured run each: the page cache, the .pyc files
        time_once(argv, root, env)
    for _ in range(rounds):
        for name, argv in argvs.items():
            times[name].append(time_once(argv, root, env))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="Runs of each command (the median is reported).")
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="The checkout whose CLI is measured.")
    parser.add_argument("--no-save", action="store_true", help="Do not write bench/results/cli-<stamp>.json.")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    paths = command_paths()
    load_before = os.getloadavg()
    times = measure(paths, args.rounds, root)
    load_after = os.getloadavg()
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians[BASELINE]
    print(f"{'command':<44} {'median s':>9} {'max s':>7} {'x bare':>7}")
    for name, median in medians.items():
        print(f"{name:<44} {median:9.3f} {max(times[name]):7.3f} {median / base:7.1f}")
    commands = [m for name, m in medians.items() if name != BASELINE]
    print(
        f"{len(commands)} commands, median of {args.rounds} rounds each: slowest {max(commands):.3f} s, "
        f"median {statistics.median(commands):.3f} s; bare python {base:.3f} s; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} CPUs)"
    )
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"cli-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
        document: dict[str, Any] = {
            "root": str(root),
            "commit": _commit(root),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": {"before": load_before[0], "after": load_after[0]},
            "rounds": args.rounds,
            "seconds": times,
            "medians": medians,
            "ratio_to_bare_python": {name: m / base for name, m in medians.items()},
        }
        out.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def _commit(root: Path) -> str | None:
    result = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or None


if __name__ == "__main__":
    raise SystemExit(main())
