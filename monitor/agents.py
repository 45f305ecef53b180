"""The monitor's Faust edges: two agents, a checkpoint timer and the rebalance hooks. Every decision is in the pure
modules (partition.py, merge.py); this module moves records between Kafka and them.

- **records agent** (`scores`, `scores.shadow`, `labels`, co-partitioned by account id; concurrency 1, records
  not acknowledged on the fly): decodes a record and hands it to its partition's `PartitionState`; the record's
  acknowledgement is held.
- **checkpoint timer** (every `MONITOR_CHECKPOINT_INTERVAL_S`): per partition, writes the state records the
  checkpoint returns to the state table's changelog (partition p of the changelog, whatever the timer's
  context), releases the held acknowledgements (Faust flushes its producer before it commits offsets, so a
  committed offset means its effect is in the changelog), sends the windows that closed to the merge topic and
  waits for their delivery before forgetting them, then progress and A/B counts.
- **merge agent** (the internal single-partition merge topic; one worker owns it): `Merger` evaluates windows
  and looks at experiments; their records go to `monitor.drift`, `monitor.ab`, `monitor.alerts`, their numbers
  to the gauges.
- **dead letters** (`monitor.dlq`): a score or label that does not parse (the contract's reason) or cannot be
  applied (`processing_failed`) is written there, original bytes and reason headers (`streamscore.deadletters`),
  and its delivery awaited before the record joins the held acknowledgements; the stream goes on. Only
  infrastructure (the registry, the broker) is retried, for `MONITOR_GIVE_UP_AFTER_S`, then the worker exits 3.
- **rebalance**: at revocation every partition's state is checkpointed and dropped (Faust seeks every partition
  back to its committed offset afterwards); when the state table is recovered, each assigned partition's state is
  rebuilt from its records, and the re-read records are replays. A source partition without a committed offset is
  sought back to its log start when Faust clears the streams' queues after its own seek (`unread_starts`: what
  Faust fetched before that seek is dropped, and it rewinds only the partitions with a committed offset).
- **a checkpoint cut short**: a checkpoint moves the partition state on (sequence numbers, counted units, dirty
  marks cleared) before its records reach the changelog. If writing them fails or is cancelled (a broker that
  stays away, a shutdown, the watchdog), the state in memory is ahead of the changelog, and any later write from
  it would store effects whose records are missing — A/B counts that include units the changelog never got, so
  that the replay after a restart counts them again. So the states are marked diverged: nothing more is written
  from them (not even the checkpoint at revocation), no record is applied or acknowledged, and the worker gives up
  (exit 3) to be rebuilt from the changelog, whose prefix is exact (partition.py).

One asyncio lock orders the agent, the timer and the hooks: a checkpoint never sees half an update.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from monitor.app_settings import MonitorAppSettings
from monitor.merge import MergeOutput, Merger
from monitor.metrics import MonitorMetrics
from monitor.partition import CODES, Clocks, PartitionState, Policy, Record, TopicKind, key_partition
from monitor.references import ReferenceBook, ReferenceUnavailableError
from streamscore.contracts import DeadLetterReason, DeadLetterStage, Label, Score, parse_event
from streamscore.deadletters import DeadLetterGiveUpError, DeadLetterWriter, SourceRecord
from streamscore.errors import EventError, StreamscoreError
from streamscore.logs import kafka_context

log = logging.getLogger(__name__)

STATE_TABLE = "monitor-state"
MERGE_TABLE = "monitor-merge"
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 10.0
DECODE_REASONS = frozenset({DeadLetterReason.NOT_UTF8, DeadLetterReason.NOT_JSON})
"""Reasons found before the JSON could be read (stage `decode`); the others are the contract's (`validate`)."""


class InfraGiveUpError(StreamscoreError):
    """A dependency of the monitor stayed unavailable longer than MONITOR_GIVE_UP_AFTER_S."""

    retryable = True

    def __init__(self, what: str, seconds: float, last: str) -> None:
        super().__init__(f"{what} unavailable for {seconds:.0f} s (last error: {last}); exiting for a restart")


async def write_changelog(table: Any, partition: int, records: list[Record]) -> None:
    """Write state records to partition `partition` of the table's changelog and wait until the broker has them.

    Not Faust's `table[key] = value`: that goes through Faust's producer buffer, and the flush Faust runs before
    committing offsets returns after 0.1 s without a message sent, so an offset can be committed before the state
    it depends on is stored. Records of one partition are sent in order by one producer, so the log keeps their
    order (what recovery relies on, see partition.py)."""
    deliveries = await send_changelog(table, partition, records)
    if deliveries:
        await asyncio.gather(*deliveries)


async def send_changelog(table: Any, partition: int, records: list[Record]) -> list[Any]:
    """`write_changelog` without the wait: the records are queued in order; returns their deliveries."""
    topic = table.changelog_topic
    deliveries = []
    for key, value in records:
        # Keys and values in JSON, as recovery decodes them (the table's schema); a deletion is a null value.
        serializer = "raw" if value is None else "json"
        deliveries.append(
            await topic.send(
                key=key, value=value, partition=partition, key_serializer="json", value_serializer=serializer
            )
        )
    return deliveries


class StateDivergedError(StreamscoreError):
    """A checkpoint could not be written whole: the partition states must be rebuilt from the changelog."""

    retryable = True

    def __init__(self, why: str) -> None:
        super().__init__(f"{why}; exiting so that a restart rebuilds the state from the changelog")


class RecordingStore(MutableMapping[str, Any]):
    """The merging agent's view of its table: reads and writes the table's in-memory data, and remembers the
    writes so the agent can send them to the changelog itself (see `write_changelog`)."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.writes: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.writes[key] = value

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.writes[key] = None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.data.keys()))

    def __len__(self) -> int:
        return len(self.data)

    def take(self) -> list[Record]:
        writes, self.writes = list(self.writes.items()), {}
        return writes


@dataclass
class Topics:
    """The Faust topics the edges use, and the source topic names by kind."""

    sources: Any
    merge: Any
    drift: Any
    ab: Any
    alerts: Any
    kinds: dict[str, TopicKind]


@dataclass
class Runtime:
    """What the agents, the timer and the hooks share."""

    app: Any
    settings: MonitorAppSettings
    partitions: int
    state_table: Any
    merge_table: Any
    topics: Topics
    book: ReferenceBook
    metrics: MonitorMetrics
    states: dict[int, PartitionState] = field(default_factory=dict)
    held: dict[int, list[Any]] = field(default_factory=lambda: defaultdict(list))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    references_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """One reference load at a time: the start-up warm-up and the agents ask for the same versions, and two
    downloads into the same cache folder read each other's half-written file."""
    ready: bool = False
    letters: DeadLetterWriter | None = None
    """Where records that cannot be parsed or applied go (`monitor.dlq`); None: only logged (unit tests)."""
    on_give_up: Callable[[str], None] | None = None
    """Called when infrastructure stayed down past MONITOR_GIVE_UP_AFTER_S (the worker exits 3, see app.py)."""
    stream: Any = None
    log_ends: dict[TP, tuple[int, int]] = field(default_factory=dict)
    """(offset processed, log end) of a partition one offset short of its end at the last checkpoint."""
    last_checkpoint: float | None = None
    last_progress_sent: dict[int, int] = field(default_factory=dict)
    last_ab_sent: dict[int, float] = field(default_factory=dict)
    consumed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    merged: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    record_counters: dict[tuple[str, str], Any] = field(default_factory=dict)
    """The records counter's children by (topic, outcome): `labels()` costs ~2 µs a record otherwise."""
    early: list[Any] = field(default_factory=list)
    """Records delivered while the states were being rebuilt, applied once they are (`on_record`)."""
    unread: dict[TP, int] = field(default_factory=dict)
    """Source partitions without a committed offset at the last rebuild → their log start (`unread_starts`), until
    Faust clears the streams' queues after its seek (`on_queues_cleared`)."""
    queue_watch: Any = None
    """The `QueueClearWatch` Faust's flow control holds weakly (kept alive here)."""
    diverged: str | None = None
    """Why the states in memory are ahead of the changelog (a checkpoint cut short); None while they are not. Once
    set it stays: nothing more is written or applied from these states (module docstring)."""

    @property
    def policy(self) -> Policy:
        s = self.settings
        return Policy(
            partitions=self.partitions,
            include_api_scores=s.include_api_scores,
            allowed_lateness_s=s.allowed_lateness_s,
            unit_retention_s=s.unit_retention_s,
            srm_accounts=s.srm_accounts,
            idle_close_s=s.idle_close_s,
            wall_clock=s.wall_clock,
            clock_speed=s.clock_speed,
        )

    # --- references ----------------------------------------------------------------------------------------------

    async def ensure_references(self, versions: set[str]) -> None:
        """Load the versions' references on an executor; the registry being unreachable is retried with backoff
        (the consumer keeps heartbeating meanwhile)."""
        loop = asyncio.get_running_loop()
        async with self.references_lock:
            for version in sorted(v for v in versions if self.book.needs(v)):
                delay, first_failure = RETRY_INITIAL_S, None
                while True:
                    try:
                        await loop.run_in_executor(None, self.book.load, version)
                        break
                    except ReferenceUnavailableError as exc:
                        now = time.monotonic()
                        first_failure = now if first_failure is None else first_failure
                        if now - first_failure >= self.settings.give_up_after_s:
                            self.give_up(InfraGiveUpError("the model registry", now - first_failure, exc.message))
                            raise
                        self.metrics.infra_retries.labels(dependency="registry").inc()
                        log.warning("%s; retrying in %.1f s", exc.message, delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2.0, RETRY_MAX_S)

    def give_up(self, error: StreamscoreError) -> None:
        log.critical("giving up: %s", error.message)
        if self.on_give_up is not None:
            self.on_give_up(error.message)

    def diverge(self, what: str, exc: BaseException) -> None:
        """A checkpoint's records may not all be in the changelog: stop writing from these states, and unless the
        worker is stopping anyway, give up so that a restart rebuilds them from the changelog."""
        if self.diverged is not None:
            return
        self.diverged = f"{what} was cut short ({type(exc).__name__}: {exc or 'no detail'})"
        if self.app is not None and bool(self.app.should_stop):
            log.warning("%s; nothing more is written from the states in memory", self.diverged)
        else:
            self.give_up(StateDivergedError(self.diverged))

    # --- records -------------------------------------------------------------------------------------------------

    async def on_record(self, event: Any) -> None:
        async with self.lock:
            if self.diverged is not None:
                return  # not acknowledged: this worker's restart reads it again
            state = self.states.get(event.message.partition) if self.ready else None
            if state is None:
                if not self.ready:
                    # Delivered while the states are being rebuilt: Faust can hand over a record fetched before the
                    # rebalance. Kept and applied once they are rebuilt (a replay if its effect was checkpointed), so
                    # that no record of a partition this worker owns goes unacknowledged while later ones are
                    # acknowledged — Faust's commit can step over such a hole (the record is then never read again).
                    self.early.append(event)
                return  # not ours (any more): its partition's owner reads it again
            await self.apply(state, event)

    async def unread_starts(self) -> dict[TP, int]:
        """The assigned source partitions without a committed offset, and their log starts. Faust resumes fetching the
        source partitions before it seeks them to their committed offsets, then clears the streams' queues: what was
        fetched in between and not yet delivered is dropped. A partition with a committed offset is sought back and
        reads it again; one without is not sought (aiokafka seeks only to a committed offset above 0), so it reads on
        after the dropped records — never applied, never acknowledged, and Faust's commit, having no committed offset
        to check its first acknowledged offset against, steps over them (the A/B crash test lost the first half's
        labels of the four partitions the killed worker had not read yet). Not with MONITOR_AUTO_OFFSET_RESET=latest:
        nothing before the assignment is to be read then."""
        if self.settings.auto_offset_reset != "earliest":
            return {}
        consumer = self.app.consumer
        committed = {(tp.topic, tp.partition): offset for tp, offset in (await consumer.seek_to_committed()).items()}
        fresh = [
            TP(tp.topic, tp.partition)
            for tp in consumer.assignment()
            if tp.topic in self.topics.kinds and not committed.get((tp.topic, tp.partition))
        ]
        if not fresh:
            return {}
        starts = {(tp.topic, tp.partition): offset for tp, offset in (await consumer.earliest_offsets(*fresh)).items()}
        return {tp: int(starts.get((tp.topic, tp.partition)) or 0) for tp in fresh}

    def on_queues_cleared(self) -> None:
        """Faust cleared the streams' queues (this runtime is registered with its flow control). The one right after a
        rebuild follows Faust's seek to the committed offsets: each partition that had none is sought back to its log
        start here, as Faust seeks the others — what was applied of it already is replayed (a no-op)."""
        if not self.ready or not self.unread:
            return
        unread, self.unread = self.unread, {}
        for tp, start in sorted(unread.items()):
            seek_now(self.app.consumer, tp, start)
        log.info("source partitions without a committed offset read again from their start: %s", sorted(unread))

    async def apply(self, state: PartitionState, event: Any) -> None:
        """One record into its partition's state (the lock held); its acknowledgement is held for the checkpoint."""
        message = event.message
        topic, partition = message.topic, message.partition
        kind = self.topics.kinds[topic]
        self.consumed[kind] += 1
        try:
            not_after = time.time() + self.settings.max_event_ahead_s
            if kind == "labels":
                label = parse_event(Label, message.value or b"", not_after_s=not_after)
                outcome: str = state.on_label(label, message.offset)
            else:
                score = parse_event(Score, message.value or b"", not_after_s=not_after)
                if self.book.needs(score.model_version):
                    await self.ensure_references({score.model_version})
                outcome, note = state.on_score(score, kind, message.offset, time.time())
                if note is not None:
                    self.metrics.drift_skipped.labels(reason=note).inc()
        except EventError as exc:
            # The record itself is defective: dead-lettered with the contract's reason, then acknowledged with
            # the others at the next checkpoint (never retried: the same bytes fail the same way).
            outcome = "invalid"
            state.saw(kind, message.offset)
            reason = DeadLetterReason(exc.reason)
            await self.dead_letter(message, reason, "decode" if reason in DECODE_REASONS else "validate", exc.message)
        except ReferenceUnavailableError:
            raise  # infrastructure, given up on: never acknowledged, the worker is stopping
        except Exception as exc:  # applying one record failed: the stream must not stop on it
            log.exception("applying a record failed topic=%s partition=%d offset=%d", topic, partition, message.offset)
            outcome = "invalid"
            state.saw(kind, message.offset)
            why = f"{type(exc).__name__}: {exc}"
            await self.dead_letter(message, DeadLetterReason.PROCESSING_FAILED, "apply", why)
        self.record_counter(kind, outcome).inc()
        self.held[partition].append(event)

    def record_counter(self, kind: str, outcome: str) -> Any:
        child = self.record_counters.get((kind, outcome))
        if child is None:
            child = self.record_counters[(kind, outcome)] = self.metrics.records.labels(topic=kind, outcome=outcome)
        return child

    async def dead_letter(self, message: Any, reason: DeadLetterReason, stage: DeadLetterStage, why: str) -> None:
        """Write one record to monitor.dlq and wait for the broker (its acknowledgement follows at the checkpoint).
        Giving up on the broker raises: the record is never acknowledged and the worker stops."""
        if self.letters is None:
            self.metrics.dead_letters.labels(reason=reason.value).inc()
            log.warning(
                "invalid record topic=%s partition=%d offset=%d (no dead-letter writer): %s",
                message.topic,
                message.partition,
                message.offset,
                why,
            )
            return
        try:
            await self.letters.write([self.letters.letter(SourceRecord.of_faust(message), reason, why, stage)])
        except DeadLetterGiveUpError as exc:
            self.give_up(exc)
            raise

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def caught_up(self, topic: str, partition: int) -> bool:
        """Every record up to the log end processed, by the partition state's own count (restored with it after a
        restart). Not the fetch position: fetched records wait in the consumer's buffer (for seconds when a
        checkpoint holds the lock on a loaded machine), and a window closed meanwhile would make them late."""
        tp = TP(topic, partition)
        state = self.states.get(partition)
        try:
            highwater = self.app.consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not assigned / not fetched yet: not caught up
            return False
        if state is None or highwater is None:
            return False
        processed = state.processed.get(CODES[self.topics.kinds[topic]], -1)
        if processed + 1 >= highwater:
            return True
        # One offset short: the log ends with a transaction's commit marker (never delivered), or with a record on
        # its way to the agent, which processes it as soon as the lock is free. A marker stays: the same two offsets
        # at the previous checkpoint mean caught up.
        seen = (processed, int(highwater))
        previous, self.log_ends[tp] = self.log_ends.get(tp), seen
        return processed + 2 == highwater and previous == seen

    async def clocks(self, partition: int) -> Clocks:
        names = {kind: name for name, kind in self.topics.kinds.items()}
        score_kinds: tuple[TopicKind, ...] = ("scores", "shadow")
        behind = frozenset([kind for kind in score_kinds if not self.caught_up(names[kind], partition)])
        labels = self.caught_up(names["labels"], partition)
        return Clocks(now=time.time(), scores_caught_up=not behind, labels_caught_up=labels, behind=behind)

    async def write(self, partition: int, records: list[Record]) -> None:
        await write_changelog(self.state_table, partition, records)
        self.metrics.checkpoint_records.inc(len(records))

    async def queue(self, partition: int, records: list[Record]) -> list[Any]:
        """Send state records to the changelog without waiting; returns their deliveries."""
        self.metrics.checkpoint_records.inc(len(records))
        return await send_changelog(self.state_table, partition, records)

    async def checkpoint_all(self) -> None:
        async with self.lock:
            if not self.ready or self.diverged is not None:
                return
            try:
                await self.checkpoint(sorted(self.states))
            except BaseException as exc:
                self.diverge("a checkpoint", exc)
                raise
            self.last_checkpoint = time.monotonic()
            self.metrics.last_checkpoint.set(time.time())
            self.metrics.open_windows.set(sum(len(s.windows) for s in self.states.values()))

    async def checkpoint(self, partitions: list[int]) -> None:
        """Checkpoint `partitions` together, in steps; within a partition each step waits for the broker to have
        the previous one, across partitions they share the waits — three round trips to the broker in all, not
        three per partition (with six partitions on a loaded broker, that was most of a 2–4 s checkpoint):

        1. each partition's state records (`PartitionState.checkpoint`), then the offsets of the records they cover
           are acknowledged;
        2. the partials of the windows due to close, to the merge topic;
        3. the records that forget those windows (`PartitionState.close`);
        4. progress and A/B messages (not awaited: the merge agent keeps the latest of each)."""
        started = time.perf_counter()
        deliveries: list[Any] = []
        for partition in partitions:
            state = self.states[partition]
            counted_before = state.units_counted
            deliveries += await self.queue(partition, state.checkpoint(await self.clocks(partition)))
            self.metrics.units_counted.inc(state.units_counted - counted_before)
        await asyncio.gather(*deliveries)
        for partition in partitions:
            for event in self.held.pop(partition, []):
                await self.stream.ack(event)
        due = {partition: self.states[partition].due_windows() for partition in partitions}
        partials = [
            await self.send(self.topics.merge, b"window", self.states[partition].partial(key))
            for partition in partitions
            for key in due[partition]
        ]
        await asyncio.gather(*partials)
        deliveries = []
        for partition in partitions:
            deliveries += await self.queue(partition, self.states[partition].close(due[partition]))
        await asyncio.gather(*deliveries)
        now = time.monotonic()
        for partition in partitions:
            state = self.states[partition]
            progress = state.progress()
            if progress is not None and (due[partition] or self.last_progress_sent.get(partition) != progress["below"]):
                await self.send(self.topics.merge, b"progress", progress)
                self.last_progress_sent[partition] = progress["below"]
            if now - self.last_ab_sent.get(partition, -math.inf) >= self.settings.publish_interval_s:
                for message in state.ab_messages():
                    await self.send(self.topics.merge, b"ab", message)
                self.last_ab_sent[partition] = now
        self.metrics.checkpoint_latency.observe(time.perf_counter() - started)

    async def send(self, topic: Any, key: bytes, value: Mapping[str, Any]) -> Any:
        """Buffer a JSON message; returns the future of its delivery."""
        return await topic.send(key=key, value=json.dumps(value, separators=(",", ":")).encode())

    # --- rebalance -----------------------------------------------------------------------------------------------

    async def on_revoked(self) -> None:
        """Checkpoint and drop every partition's state: after a rebalance Faust seeks every partition back to its
        committed offset, and the state is rebuilt from the changelog (the records re-read are replays)."""
        async with self.lock:
            if self.ready and self.diverged is None:
                try:
                    for partition, state in self.states.items():
                        clocks = Clocks(now=time.time(), scores_caught_up=False, labels_caught_up=False)
                        await self.write(partition, state.checkpoint(clocks))
                except BaseException as exc:
                    self.diverge("the checkpoint at revocation", exc)
                    raise
            self.states.clear()
            self.held.clear()
            self.log_ends.clear()
            self.last_progress_sent.clear()
            self.last_ab_sent.clear()
            self.unread = {}
            self.ready = False

    async def on_recovered(self) -> None:
        """Rebuild the assigned partitions' states from the recovered state table (not once diverged: the worker is
        stopping, and records of the cut checkpoint may still reach the changelog after this recovery read it)."""
        async with self.lock:
            if self.diverged is not None:
                log.warning("not rebuilding the partition states: %s", self.diverged)
                return
            scores = {name for name, kind in self.topics.kinds.items() if kind == "scores"}
            assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic in scores}
            records: dict[int, list[tuple[str, Any]]] = defaultdict(list)
            for key, value in list(self.state_table.data.items()):
                partition = key_partition(str(key))
                if partition is not None and partition in assigned:
                    records[partition].append((str(key), value))
            versions: set[str] = set()
            for items in records.values():
                versions |= PartitionState.versions_in(items)
            await self.ensure_references(versions)
            self.states = {}
            for partition in sorted(assigned):
                state = PartitionState(partition, self.settings.stats, self.policy, self.book)
                await self.write(partition, state.restore(records.get(partition, [])))
                self.states[partition] = state
            self.unread = await self.unread_starts()
            self.ready = True
            early, self.early = self.early, []
            applied = 0
            for event in early:
                owned = self.states.get(event.message.partition)
                if owned is not None:
                    await self.apply(owned, event)
                    applied += 1
            if early:
                log.info("%d record(s) delivered during the rebuild, %d of them applied", len(early), applied)
            log.info(
                "monitor partitions %s rebuilt: %d units, %d open windows",
                sorted(assigned),
                sum(len(s.units) for s in self.states.values()),
                sum(len(s.windows) for s in self.states.values()),
            )

    # --- merge ---------------------------------------------------------------------------------------------------

    async def on_merge(self, merger: Merger, message: Mapping[str, Any]) -> None:
        """One merge message: the merger's table changes are written to the changelog (delivery awaited) before
        the results are published and the message acknowledged."""
        versions = merger.versions()
        if message.get("type") == "window":
            if message.get("fv"):
                versions.add(str(message["fv"]))
            versions.update(str(version) for _, version in message.get("sv", []))
        await self.ensure_references(versions)
        store = merger.store
        assert isinstance(store, RecordingStore)
        out = merger.on_message(message, time.time())
        await write_changelog(self.merge_table, 0, store.take())
        self.merged[str(message.get("type"))] += 1
        await self.publish(out)

    async def publish(self, out: MergeOutput) -> None:
        for r in out.drift:
            await self.topics.drift.send(key=r.feature.encode(), value=r.model_dump_json().encode())
        for a in out.ab:
            await self.topics.ab.send(key=a.experiment_id.encode(), value=a.model_dump_json().encode())
            self.metrics.observe_ab(a)
        for alert in out.alerts:
            await self.topics.alerts.send(key=alert.key.encode(), value=alert.model_dump_json().encode())
            self.metrics.alerts.labels(kind=alert.kind).inc()
            log.warning("ALERT %s %s: %s", alert.kind, alert.key, alert.message)
        if out.drift:
            self.metrics.observe_drift(out.drift)
            windows = sorted({r.window for r in out.drift})
            drifted = sorted({r.feature for r in out.drift if r.drifted})
            log.info("drift windows %s evaluated: %d series, drifted: %s", windows, len(out.drift), drifted or "none")
        if out.dropped_features:
            self.metrics.dropped_features.inc(out.dropped_features)

    # --- health --------------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        age = None if self.last_checkpoint is None else time.monotonic() - self.last_checkpoint
        stale = self.ready and age is not None and age > self.settings.unhealthy_after_s
        return {
            "healthy": not stale and self.diverged is None,
            "ready": self.ready and self.diverged is None,
            "diverged": self.diverged,
            "partitions": sorted(self.states),
            "last_checkpoint_age_s": None if age is None else round(age, 3),
            "pending_units": sum(s.pending_units for s in self.states.values()),
            "open_windows": sum(len(s.windows) for s in self.states.values()),
        }

    def progress_line(self, elapsed_s: float) -> str:
        rate = ", ".join(f"{kind} {n / elapsed_s:,.0f}/s" for kind, n in sorted(self.consumed.items())) or "idle"
        merged = ", ".join(f"{kind} {n}" for kind, n in sorted(self.merged.items())) or "none"
        return (
            f"monitor: consumed {rate}; partitions {sorted(self.states)}; pending units "
            f"{sum(s.pending_units for s in self.states.values()):,}; counted "
            f"{sum(s.units_counted for s in self.states.values()):,}; open windows "
            f"{sum(len(s.windows) for s in self.states.values())}; merge messages {merged}"
        )


_FALLBACK_SEEKS: set[asyncio.Future[None]] = set()


def seek_now(consumer: Any, tp: TP, offset: int) -> None:
    """What Faust's `Consumer.seek` does — the fetch position and the offset its reader delivers from — without
    awaiting: in `Runtime.on_queues_cleared` it must happen before Faust resumes the flow, as its own seek does.

    This reaches two private attributes of Faust's consumer (faust-streaming 0.11–0.15), because the public
    `Consumer.seek` is a coroutine and would run after the flow resumed. Should a Faust release rename them, the seek
    falls back to the public coroutine (narrowing the fix, not losing it) and says so in the log;
    tests/unit/monitor/test_agents.py checks the installed Faust still has them."""
    thread = getattr(consumer, "_thread", None)
    read_offsets = getattr(consumer, "_read_offset", None)
    if thread is None or not callable(getattr(thread, "seek", None)) or read_offsets is None:
        log.warning("Faust's consumer has no synchronous seek; seeking %s to %d after the flow resumes", tp, offset)
        seek = asyncio.ensure_future(consumer.seek(tp, offset))
        _FALLBACK_SEEKS.add(seek)  # the loop keeps only a weak reference to a task
        seek.add_done_callback(_FALLBACK_SEEKS.discard)
        return
    thread.seek(tp, offset)
    read_offsets[tp] = offset if offset else None


class QueueClearWatch:
    """Registered with Faust's flow control as one of the queues it clears when it resumes: calls `on_clear` then."""

    def __init__(self, on_clear: Callable[[], None]) -> None:
        self.on_clear = on_clear

    def clear(self) -> None:
        self.on_clear()


def install(runtime: Runtime, merger: Merger) -> None:
    """Register the agents, timers, hooks and pages of the monitor on `runtime.app`."""
    app = runtime.app

    runtime.queue_watch = QueueClearWatch(runtime.on_queues_cleared)
    app.flow_control.manage_queue(runtime.queue_watch)

    @app.agent(runtime.topics.sources, name="records", concurrency=1)  # type: ignore[untyped-decorator]
    async def records(stream: Any) -> None:
        runtime.stream = stream
        async for event in stream.noack().events():
            await runtime.on_record(event)

    @app.agent(runtime.topics.merge, name="merge", concurrency=1)  # type: ignore[untyped-decorator]
    async def merge(stream: Any) -> None:
        async for event in stream.noack().events():
            try:
                message = json.loads(event.message.value)
            except ValueError:
                record = event.message
                log.error(
                    "unreadable merge message topic=%s partition=%d offset=%d",
                    record.topic,
                    record.partition,
                    record.offset,
                    extra=kafka_context(record.topic, record.partition, record.offset),
                )
            else:
                await runtime.on_merge(merger, message)
            await stream.ack(event)

    @app.timer(interval=runtime.settings.checkpoint_interval_s, name="checkpoint")  # type: ignore[untyped-decorator]
    async def checkpoint() -> None:
        if app.should_stop:
            return
        try:
            await runtime.checkpoint_all()
        except Exception as exc:
            if not app.should_stop:
                raise
            # The producer stops before the timers do: what this checkpoint did not write was not committed either,
            # and the next start replays it.
            log.info("checkpoint cut short by the shutdown (%s); the next start replays what it did not write", exc)

    started = [time.monotonic()]

    @app.timer(interval=runtime.settings.progress_interval_s, name="progress")  # type: ignore[untyped-decorator]
    async def progress() -> None:
        now = time.monotonic()
        log.info("%s", runtime.progress_line(max(now - started[0], 1e-9)))
        runtime.consumed.clear()
        runtime.merged.clear()
        started[0] = now

    @app.on_partitions_revoked.connect  # type: ignore[untyped-decorator]
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        await runtime.on_revoked()

    @runtime.state_table.on_recover  # type: ignore[untyped-decorator]
    async def on_recovered() -> None:
        await runtime.on_recovered()
