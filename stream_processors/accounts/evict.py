"""Dropping the table rows of accounts that can only start afresh: the processor's memory does not grow with the
number of accounts ever seen.

An account idle for `streamscore.features.IDLE_S` (two days) starts afresh at its next transaction — offline and
online, it is one rule of `apply_transaction`. The event-time window refuses an event more than `max_behind_s` (seven
days) behind the clock that received it. So once a partition's receiving clock has passed a row's last event by both,
no event the processor can still accept would fold into that row rather than a fresh state: dropping the row changes
no feature, and the table holds the accounts active in the last nine days, not every account since the start.

The clock is the partition's own: the newest receiving time (the broker's append time on the transactions topic) of
the records the agent has taken from it, never the wall clock — a backlog being read hours late still carries events
that fold into their rows. A partition without one (no record taken since the worker started) is not swept, and
neither is a row of a partition not assigned here (its owner sweeps it and writes the tombstone). A dropped row's
tombstone goes to the changelog, so a restart or the partition's next owner does not bring it back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from streamscore.features import IDLE_S
from streamscore.kafka import partition_for

log = logging.getLogger(__name__)


@dataclass
class Sweeper:
    """Drops the rows no accepted event can fold into any more (see the module docstring); `sweep()` runs on a
    timer."""

    table: Any
    """The Faust table (rows: `AccountState.as_dict()` by account id)."""
    partitions: int
    """Partition count of the transactions topic (an account's partition: murmur2 of its id)."""
    assigned: Callable[[], Collection[int]]
    """The transactions partitions this worker owns now."""
    received: Mapping[int, float]
    """Per partition, the newest receiving time (epoch seconds) of a record the agent took (`Edge.received`)."""
    max_behind_s: float
    """The event-time window's lateness (`EventTimeWindow.max_behind_s`)."""
    forget: Callable[[str], None] = lambda account: None
    """Drops what else is kept of the account (the agent's parsed-state cache, its pending changelog mark)."""
    on_evicted: Callable[[int], None] = lambda count: None
    chunk: int = 1000
    """Rows looked at between two turns of the event loop."""

    def horizon(self, partition: int) -> float | None:
        """Rows of `partition` whose last event is before this are dropped; None: the partition is not swept."""
        received = self.received.get(partition)
        return None if received is None else received - self.max_behind_s - IDLE_S

    async def sweep(self) -> int:
        """One pass over the table; returns the rows dropped."""
        owned = set(self.assigned())
        horizons = {p: h for p in owned if (h := self.horizon(p)) is not None}
        if not horizons:
            return 0
        data = self.table.data
        dropped = 0
        for i, account in enumerate(list(data.keys())):
            if i % self.chunk == self.chunk - 1:
                await asyncio.sleep(0)  # the consumer and the agent run between chunks
            key = str(account)
            partition = partition_for(key.encode(), self.partitions)
            horizon = horizons.get(partition)
            if horizon is None:
                continue
            stored = data.get(account)
            last = stored.get("last_event_ts") if stored else None
            if last is None or float(last) >= horizon:
                continue
            # Checked and dropped in one turn of the event loop: the agent cannot fold into the row in between.
            self.table.send_changelog(partition, account, None, value_serializer="raw")
            del data[account]
            self.forget(key)
            dropped += 1
        if dropped:
            self.on_evicted(dropped)
            log.info("dropped %d account rows idle past %.0f days and the event-time window", dropped, IDLE_S / 86400)
        return dropped
