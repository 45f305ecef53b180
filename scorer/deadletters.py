"""Dead letters: the original record byte for byte plus reason headers (see docs/contracts.md).

The pieces live in `streamscore.deadletters`, shared with the feature processor and the monitor (services do not
import each other); this module keeps the scorer's import path.
"""

from __future__ import annotations

from streamscore.deadletters import MAX_DEAD_LETTER_VALUE, DeadLetterRecord, SourceRecord, dead_letter

__all__ = ["MAX_DEAD_LETTER_VALUE", "DeadLetterRecord", "SourceRecord", "dead_letter"]
