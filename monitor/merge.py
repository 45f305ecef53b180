"""The merging agent's logic: closed windows and A/B counts of every partition in, one result per window and per
look out. Pure over a key-value store (the Faust table of the single-partition merge topic in production, a dict
in tests).

Why one merging agent: a window's drift statistics (KS, χ², the multiple-testing threshold across series) and an
experiment's sequential test need the counts of *all* partitions. Every partition sends (to one internal topic
with a single partition, so one worker owns the merge):

- `window`: the state of a window it closed (its counts, compressed). Merged into the stored window state by
  adding counts — the core's states merge exactly into the one-pass result. A partition's state is added once
  (the store remembers which partitions it holds), so a re-sent window changes nothing.
- `progress`: every window of partition p below `below` is closed. A window is evaluated once every partition has
  passed it, then forgotten (its index is remembered as done, so a late duplicate is ignored).
- `ab`: the partition's cumulative A/B counts and first-seen accounts per experiment. The store keeps the latest
  per partition (cumulative, so a repeat is harmless); at most every `look_interval_s`, when the sum changed, the
  merged counts are looked at: one step of the always-valid test, a `monitor.ab` record, and alerts on a changed
  verdict or a sample-ratio alarm.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor.ab import ABCounts, ABRecord, ABState, look
from monitor.alerts import Alert, ab_alerts, drift_alerts
from monitor.drift import DriftRecord, DriftWindow, evaluate
from monitor.partition import WindowBody
from monitor.reference import DriftReference, SeriesReference
from monitor.references import ReferenceBook
from monitor.settings import MonitorSettings

PROGRESS = "progress"
DONE = "done"
DONE_KEPT = 1000
"""Indices of evaluated windows remembered, to ignore late duplicates of them."""


def window_store_key(window: int) -> str:
    return f"w/{window}"


def ab_store_key(experiment: str) -> str:
    return f"ab/{experiment}"


@dataclass
class MergeOutput:
    drift: list[DriftRecord] = field(default_factory=list)
    ab: list[ABRecord] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dropped_features: int = 0
    """Partition feature states left out because they were measured against another champion version."""


class Merger:
    def __init__(
        self, store: MutableMapping[str, Any], book: ReferenceBook, stats: MonitorSettings, *, look_interval_s: float
    ) -> None:
        self.store = store
        self.book = book
        self.stats = stats
        self.look_interval_s = look_interval_s

    def versions(self) -> set[str]:
        """Model versions of the stored windows (their references must be loaded before a window is evaluated)."""
        found: set[str] = set()
        for key in list(self.store.keys()):
            if key.startswith("w/"):
                value = self.store[key]
                if value.get("fv"):
                    found.add(str(value["fv"]))
                found.update(str(version) for _, version in value.get("sv", []))
        return found

    def on_message(self, message: Mapping[str, Any], now: float) -> MergeOutput:
        out = MergeOutput()
        kind = message.get("type")
        if kind == "window":
            out.dropped_features += self._window(message)
        elif kind == "progress":
            self._progress(message)
        elif kind == "ab":
            self._ab(message, now, out)
        else:
            raise ValueError(f"unknown merge message type {kind!r}")
        if kind in ("window", "progress"):
            self._evaluate_complete(now, out)
        return out

    # --- drift ---------------------------------------------------------------------------------------------------

    def _done(self) -> list[int]:
        done: list[int] = list(self.store.get(DONE) or [])
        return done

    def _window(self, message: Mapping[str, Any]) -> int:
        key = int(message["w"])
        if key in self._done():
            return 0
        partition = int(message["p"])
        stored = self.store.get(window_store_key(key))
        incoming = WindowBody.from_json(message)
        if stored is None:
            body, partitions, dropped = incoming, [], 0
        else:
            if partition in stored["partitions"]:
                return 0
            body, partitions = WindowBody.from_json(stored), list(stored["partitions"])
            dropped = 0 if body.merge(incoming) else 1
        self.store[window_store_key(key)] = {**body.to_json(), "partitions": [*partitions, partition]}
        return dropped

    def _progress(self, message: Mapping[str, Any]) -> None:
        stored = dict(self.store.get(PROGRESS) or {"n": int(message["n"]), "below": {}})
        below = dict(stored["below"])
        p = str(message["p"])
        below[p] = max(int(message["below"]), int(below.get(p, message["below"])))
        self.store[PROGRESS] = {"n": int(message["n"]), "below": below}

    def _evaluate_complete(self, now: float, out: MergeOutput) -> None:
        progress = self.store.get(PROGRESS)
        if progress is None:
            return
        below = progress["below"]
        if len(below) < int(progress["n"]):
            return
        passed = min(int(v) for v in below.values())
        ready = sorted(int(k[2:]) for k in list(self.store.keys()) if k.startswith("w/") and int(k[2:]) < passed)
        if not ready:
            return
        done = self._done()
        at = datetime.fromtimestamp(now, tz=UTC)
        for key in ready:
            stored = self.store[window_store_key(key)]
            records = self.evaluate(WindowBody.from_json(stored))
            out.drift += records
            out.alerts += drift_alerts(records, at)
            done.append(key)
            del self.store[window_store_key(key)]
        self.store[DONE] = sorted(done)[-DONE_KEPT:]

    def evaluate(self, body: WindowBody) -> list[DriftRecord]:
        """The window's records: its features and every score series in one family (one multiple-testing
        threshold across them). Parts whose reference is not available are left out."""
        series: list[SeriesReference] = []
        parts: list[Mapping[str, Any]] = []
        if body.features_version is not None and body.features is not None:
            reference = self.book.features(body.features_version)
            if reference is not None:
                series += reference.series
                parts.append(body.features)
        for name in sorted(body.scores):
            variant, version, state = body.scores[name]
            reference = self.book.score(variant, version)
            if reference is not None:
                series += reference.series
                parts.append(state)
        if not series:
            return []
        firsts = [p["first_event_time"] for p in parts if p["first_event_time"] is not None]
        lasts = [p["last_event_time"] for p in parts if p["last_event_time"] is not None]
        state = {
            "key": body.key,
            "series": [name for p in parts for name in p["series"]],
            "bins": [b for p in parts for b in p["bins"]],
            "cells": [c for p in parts for c in p["cells"]],
            "missing": [m for p in parts for m in p["missing"]],
            "strata": [h for p in parts for h in p.get("strata") or [[[], []]] * len(p["series"])],
            "first_event_time": min(firsts) if firsts else None,
            "last_event_time": max(lasts) if lasts else None,
        }
        window = DriftWindow.from_dict(DriftReference(tuple(series)), state)
        return evaluate(window, self.stats)

    # --- A/B -----------------------------------------------------------------------------------------------------

    def _ab(self, message: Mapping[str, Any], now: float, out: MergeOutput) -> None:
        experiment = str(message["x"])
        key = ab_store_key(experiment)
        stored = dict(
            self.store.get(key)
            or {"parts": {}, "state": {}, "last_look": None, "units": None, "verdicts": {}, "srm_alarm": False}
        )
        parts = dict(stored["parts"])
        parts[str(message["p"])] = {"counts": message["counts"], "accounts": message["accounts"]}
        stored["parts"] = parts
        counts = ABCounts()
        accounts: dict[str, int] = {}
        for part in parts.values():
            counts.merge(ABCounts.from_dict(part["counts"]))
            for variant, n in part["accounts"].items():
                accounts[variant] = accounts.get(variant, 0) + int(n)
        total = [sum(c.units for c in counts.variants.values()), sum(accounts.values())]
        due = stored["last_look"] is None or now - float(stored["last_look"]) >= self.look_interval_s
        if due and total != stored["units"] and counts.variants:
            state, record = look(
                ABState.from_dict(stored["state"]),
                counts,
                self.stats,
                experiment_id=experiment,
                at=datetime.fromtimestamp(now, tz=UTC),
                assignments=accounts or None,
            )
            alerts, verdicts, srm_alarm = ab_alerts(record, stored["verdicts"], bool(stored["srm_alarm"]))
            stored.update(state=state.to_dict(), last_look=now, units=total, verdicts=verdicts, srm_alarm=srm_alarm)
            out.ab.append(record)
            out.alerts += alerts
        self.store[key] = stored
