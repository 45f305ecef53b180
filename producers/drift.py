"""Drift the generator can inject, so the monitor's drift detection can be exercised on a known change.

A `DriftSpec` says when legitimate behaviour changes (after a number of emitted events) and how:
amounts scale up, a share of transactions moves abroad, a merchant category never seen before appears.
Fraud patterns are left as they are: drift is a change of the population, not of the attackers. The
spec is plain data, parsed from one CLI-friendly string such as
`after=5000,amount_scale=2.0,foreign_share=0.3,new_category=6051,new_category_share=0.1`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_MCC = re.compile(r"^\d{4}$")


@dataclass(frozen=True, slots=True)
class DriftSpec:
    """When and how legitimate behaviour drifts; the defaults change nothing."""

    after_events: int
    """Drift applies to events emitted after this many events (0: from the first event)."""
    amount_scale: float = 1.0
    """Multiplies legitimate amounts."""
    foreign_share: float = 0.0
    """Share of legitimate transactions moved to a country other than the account's home."""
    new_category: str | None = None
    """A 4-digit MCC the world never used before the drift, e.g. 6051 (quasi-cash / crypto)."""
    new_category_share: float = 0.0
    """Share of legitimate transactions made at merchants of `new_category`."""

    def __post_init__(self) -> None:
        if isinstance(self.after_events, bool) or not isinstance(self.after_events, int) or self.after_events < 0:
            raise ValueError(f"after_events must be an integer >= 0, got {self.after_events!r}")
        if not math.isfinite(self.amount_scale) or self.amount_scale <= 0.0:
            raise ValueError(f"amount_scale must be a finite number > 0, got {self.amount_scale!r}")
        for name in ("foreign_share", "new_category_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        if self.new_category is not None and not _MCC.match(self.new_category):
            raise ValueError(f"new_category must be a 4-digit merchant category code, got {self.new_category!r}")
        if self.new_category_share > 0.0 and self.new_category is None:
            raise ValueError("new_category_share > 0 needs new_category")

    def active(self, emitted: int) -> bool:
        """Whether the event emitted after `emitted` others is drifted."""
        return emitted >= self.after_events

    @classmethod
    def parse(cls, text: str) -> DriftSpec:
        """Read `key=value` pairs separated by commas; keys: after, amount_scale, foreign_share,
        new_category, new_category_share. A missing `after` means drift from the start."""
        values: dict[str, Any] = {"after_events": 0}
        for part in text.split(","):
            if not part.strip():
                continue
            key, sep, raw = (piece.strip() for piece in part.partition("="))
            if not sep or not raw:
                raise ValueError(f"drift: expected key=value, got {part.strip()!r}")
            field_name = _ALIASES.get(key)
            if field_name is None:
                raise ValueError(f"drift: unknown key {key!r}; expected one of {', '.join(sorted(_ALIASES))}")
            try:
                values[field_name] = _CONVERTERS[field_name](raw)
            except ValueError:
                raise ValueError(f"drift: {key}={raw!r} is not a valid {_KINDS[field_name]}") from None
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"drift: {exc}") from None


def _mcc(raw: str) -> str:
    if not _MCC.match(raw):
        raise ValueError(raw)
    return raw


_ALIASES: dict[str, str] = {
    "after": "after_events",
    "after_events": "after_events",
    "amount_scale": "amount_scale",
    "foreign_share": "foreign_share",
    "new_category": "new_category",
    "new_category_share": "new_category_share",
}
_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "after_events": int,
    "amount_scale": float,
    "foreign_share": float,
    "new_category": _mcc,
    "new_category_share": float,
}
_KINDS: dict[str, str] = {
    "after_events": "integer",
    "amount_scale": "number",
    "foreign_share": "number",
    "new_category": "4-digit merchant category code",
    "new_category_share": "number",
}
