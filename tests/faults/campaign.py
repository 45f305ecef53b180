"""The fault campaign: with traffic flowing through a supervised pipeline (tests/faults/world.py), inject one fault
after another, measure how long the pipeline takes to catch up after each, and at the end count — with a reader that
is not the scorer's code (tests/faults/ledger.py) — what was lost, duplicated or wrongly dead-lettered.

    python -m tests.faults.campaign            # the full campaign (`make faults`), ~15 minutes
    python -m tests.faults.campaign --quick    # the bounded part that `make test` runs too

Each row of the table: the fault; `caught up`: seconds from the end of the fault (the broker or Redis back, the
killed process restarted by the supervisor) until every transaction the broker acknowledged before that moment has
its score; `ready`: seconds until every service's readiness answers 200 again; `by itself`: whether every service
came through without exiting (a service that exited was restarted by the supervisor, as Compose would, and the
row names it with its exit code); lost / duplicated / wrongly dead-lettered among the transactions sent during the
row. The results are written to bench/results/faults-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.faults.ledger import OutcomeReader, Traffic, Verdict, verdict
from tests.faults.world import World, fault_world
from tests.support.scoring import DEFECT_KINDS

log = logging.getLogger("faults")

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
CATCH_UP_TIMEOUT_S = 240.0


@dataclass
class Row:
    fault: str
    caught_up_s: float | None
    ready_s: float | None
    by_itself: bool
    restarted: list[str]
    lost: int = 0
    duplicated: int = 0
    wrongly_dead_lettered: int = 0
    started: float = 0.0
    ended: float = 0.0
    notes: list[str] = field(default_factory=list)


Inject = Callable[[World, Traffic], str | None]
"""Applies one fault, heals it (restart, SIGCONT, ...) and returns an optional note for the table."""


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Inject
    settle_s: float = 3.0
    """Traffic-only seconds before the fault, so every row starts from a flowing pipeline."""


# --- the faults --------------------------------------------------------------------------------------------------


def scorer_sigkill(world: World, _traffic: Traffic) -> str | None:
    scorer = world.scorers()[0]
    scorer.kill(signal.SIGKILL)
    # The supervisor restarts it; the fault has ended when the new process runs.
    deadline = time.monotonic() + 30
    while not scorer.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    return None


def broker_sigkill(world: World, _traffic: Traffic) -> str | None:
    world.stack.signal("kafka", signal.SIGKILL)
    time.sleep(5.0)
    world.stack.up()
    return None


def broker_rolling(world: World, _traffic: Traffic) -> str | None:
    """A single broker's rolling restart: SIGTERM (controlled shutdown), wait for it to exit, start it again."""
    record = world.stack.record("kafka")
    world.stack.signal("kafka", signal.SIGTERM)
    deadline = time.monotonic() + 60
    while record is not None and world.stack.record("kafka") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    world.stack.up()
    return None


def pause(name: str, seconds: float) -> Inject:
    def inject(world: World, _traffic: Traffic) -> str | None:
        world.stack.signal(name, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            world.stack.signal(name, signal.SIGCONT)
        return None

    return inject


def redis_kill(world: World, _traffic: Traffic) -> str | None:
    world.stack.signal("redis", signal.SIGKILL)
    time.sleep(2.0)
    world.stack.up()
    return "the online store came back empty"


def rebalance(world: World, _traffic: Traffic) -> str | None:
    """1 → 3 → 1 scorers: two more join the group, traffic flows 15 s across three, then they leave (SIGTERM)."""
    first = len(world.scorers())
    joined = [world.add_scorer(first + i + 1) for i in range(2)]
    world.wait_ready(120.0, joined)
    time.sleep(15.0)
    for scorer in joined:
        scorer.stop()
    return None


def process_sigkill(name: str) -> Inject:
    def inject(world: World, _traffic: Traffic) -> str | None:
        service = world.service(name)
        service.kill(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not service.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        return None

    return inject


def poison(world: World, traffic: Traffic) -> str | None:
    count = traffic.poison(copies=2)
    return f"{count} poison records"


def repeated(inject: Inject, times: int, gap_s: float = 4.0) -> Inject:
    def run(world: World, traffic: Traffic) -> str | None:
        for n in range(times):
            inject(world, traffic)
            if n + 1 < times:
                time.sleep(gap_s)
        return f"{times} times, {gap_s:g} s apart"

    return run


FULL = [
    Fault("scorer SIGKILL ×10", repeated(scorer_sigkill, 10)),
    Fault("broker SIGKILL + restart", broker_sigkill),
    Fault("broker rolling restart (SIGTERM)", broker_rolling),
    Fault("broker SIGSTOP 30 s", pause("kafka", 30.0)),
    Fault("Redis SIGSTOP 30 s", pause("redis", 30.0)),
    Fault("Redis SIGKILL + restart", redis_kill),
    Fault("rebalance 1 → 3 → 1 scorers", rebalance),
    Fault("feature processor SIGKILL", process_sigkill("feature-processor")),
    Fault("monitor SIGKILL", process_sigkill("monitor")),
    Fault(f"poison corpus ({len(DEFECT_KINDS)} kinds ×2)", poison),
]
QUICK = [
    Fault("scorer SIGKILL ×2", repeated(scorer_sigkill, 2)),
    Fault("broker SIGKILL + restart", broker_sigkill),
    Fault("Redis SIGKILL + restart", redis_kill),
    Fault("feature processor SIGKILL", process_sigkill("feature-processor")),
    Fault(f"poison corpus ({len(DEFECT_KINDS)} kinds ×2)", poison),
]


# --- the run -----------------------------------------------------------------------------------------------------


def _wait_caught_up(
    world: World, traffic: Traffic, reader: OutcomeReader, healed: float
) -> tuple[float | None, float | None]:
    """Seconds from `healed` until the pipeline flows again — every transaction acknowledged before `healed` is scored
    and so is one acknowledged after it (traffic that waited for a broker has its acknowledgement after the restart)
    — or None after CATCH_UP_TIMEOUT_S; and seconds until every service answers ready (None: not within it)."""
    backlog = traffic.acknowledged_before(healed)
    caught: float | None = None
    ready: float | None = None
    deadline = healed + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline and (caught is None or ready is None):
        now = time.monotonic()
        if (
            caught is None
            and reader.scored(backlog) >= len(backlog)
            and reader.scored(traffic.acknowledged_after(healed))
        ):
            caught = now - healed
        if ready is None and all(s.ready() for s in world.supervisor.services if s.supervised):
            ready = now - healed
        time.sleep(0.25)
    return caught, ready


def run_fault(world: World, traffic: Traffic, reader: OutcomeReader, fault: Fault) -> Row:
    time.sleep(fault.settle_s)
    started = time.monotonic()
    log.info("fault: %s", fault.name)
    note = fault.inject(world, traffic)
    healed = time.monotonic()
    caught_up, ready = _wait_caught_up(world, traffic, reader, healed)
    restarted = [
        f"{s.name} (exit {', '.join(str(e.code) for e in s.unexpected_exits(started))})"
        for s in world.supervisor.services
        if s.unexpected_exits(started)
    ]
    row = Row(
        fault=fault.name,
        caught_up_s=None if caught_up is None else round(caught_up, 1),
        ready_s=None if ready is None else round(ready, 1),
        by_itself=not restarted,
        restarted=restarted,
        started=started,
        ended=time.monotonic(),
        notes=[note] if note else [],
    )
    log.info(
        "  caught up %s s, ready %s s, %s",
        row.caught_up_s,
        row.ready_s,
        "every service by itself" if row.by_itself else "restarted: " + "; ".join(restarted),
    )
    return row


def _attribute(rows: list[Row], traffic: Traffic, reader: OutcomeReader) -> None:
    """Per row, lost / duplicated / wrongly dead-lettered among the transactions acknowledged during it."""
    with reader._lock:
        scores = dict(reader.scores)
        letters = dict(reader.letters)
    acked = dict(traffic.sent.valid)
    for row in rows:
        ids = [e for e, at in acked.items() if row.started - 3.0 <= at < row.ended]
        row.lost = sum(1 for e in ids if scores.get(e, 0) == 0)
        row.duplicated = sum(1 for e in ids if scores.get(e, 0) > 1)
        row.wrongly_dead_lettered = sum(1 for e in ids if letters.get(e, 0) > 0)


@dataclass
class Campaign:
    rows: list[Row]
    verdict: Verdict
    rate: float
    seconds: float
    services: dict[str, dict[str, Any]]

    def table(self) -> str:
        lines = [
            "| fault | caught up (s) | ready (s) | recovered by itself | lost | duplicated | wrongly dead-lettered |",
            "|---|---:|---:|---|---:|---:|---:|",
        ]
        for r in self.rows:
            itself = "yes" if r.by_itself else "no — restarted: " + "; ".join(r.restarted)
            caught = "—" if r.caught_up_s is None else f"{r.caught_up_s:.1f}"
            ready = "—" if r.ready_s is None else f"{r.ready_s:.1f}"
            lines.append(
                f"| {r.fault} | {caught} | {ready} | {itself} | {r.lost} | {r.duplicated} | {r.wrongly_dead_lettered} |"
            )
        v = self.verdict
        lines.append(
            f"\nIn all: {v.sent_valid} transactions and {v.sent_poison} poison records sent at {self.rate:g}/s over "
            f"{self.seconds:.0f} s; lost {v.lost}, duplicated {v.duplicated}, wrongly dead-lettered "
            f"{v.wrongly_dead_lettered}, poison not dead-lettered with its reason {v.poison_missed}, poison "
            f"dead-lettered twice {v.poison_duplicated}, producer failures {v.producer_failures}."
        )
        return "\n".join(lines)


def run_campaign(
    folder: Path, faults: list[Fault], *, rate: float, monitor: bool = True, drain_s: float = CATCH_UP_TIMEOUT_S
) -> Campaign:
    started = time.monotonic()
    with fault_world(folder, monitor=monitor) as world:
        reader = OutcomeReader(world.kafka, world.topics).start()
        traffic = Traffic(world.kafka, world.topics, rate).start()
        rows: list[Row] = []
        try:
            for fault in faults:
                rows.append(run_fault(world, traffic, reader, fault))
            time.sleep(3.0)
        finally:
            traffic.stop()
        # Drain: everything acknowledged has an outcome, or the drain time passed.
        deadline = time.monotonic() + drain_s
        expected = set(traffic.sent.valid)
        while time.monotonic() < deadline and reader.scored(expected) < len(expected):
            time.sleep(0.5)
        time.sleep(3.0)  # late duplicates, if any, would show up now
        reader.stop()
        if reader.error is not None:
            raise RuntimeError(f"the outcome reader failed: {reader.error!r}")
        _attribute(rows, traffic, reader)
        services = {
            s.name: {"starts": s.starts, "exits": [asdict(e) for e in s.exits], "log": str(s.log)}
            for s in world.supervisor.services
        }
        return Campaign(rows, verdict(traffic.sent, reader), rate, time.monotonic() - started, services)


def save(campaign: Campaign, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"faults-{name}-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    document = {
        "rate": campaign.rate,
        "seconds": campaign.seconds,
        "rows": [asdict(r) for r in campaign.rows],
        "verdict": asdict(campaign.verdict),
        "services": campaign.services,
        "table": campaign.table(),
    }
    path.write_text(json.dumps(document, indent=2, default=str))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.campaign", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the bounded part `make test` runs")
    parser.add_argument("--rate", type=float, default=200.0, help="transactions per second (default 200)")
    parser.add_argument("--folder", type=Path, default=None, help="where the stack and logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the services and the private stack are stopped by their pids.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    folder = args.folder or Path(tempfile.mkdtemp(prefix="streamscore-faults-"))
    log.info("fault campaign (%s) in %s", "quick" if args.quick else "full", folder)
    campaign = run_campaign(folder, QUICK if args.quick else FULL, rate=args.rate)
    path = save(campaign, "quick" if args.quick else "full")
    print(campaign.table())
    print(f"\nresults: {path}; logs: {folder / 'logs'}")
    return 0 if campaign.verdict.clean and all(r.caught_up_s is not None for r in campaign.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
