"""Pandas views of the history for the feature code: the one conversion of Parquet rows to
`TransactionFacts`, used by training, the Feast batch sources and the tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from streamscore.features import TransactionFacts


def epoch_seconds(times: pd.Series) -> NDArray[np.float64]:
    """Event times as epoch seconds, bit for bit what `datetime.timestamp()` gives online (µs / 1e6)."""
    micros = times.dt.as_unit("us").astype("int64").to_numpy()
    seconds: NDArray[np.float64] = micros / 1e6
    return seconds


def transaction_facts(history: pd.DataFrame) -> list[TransactionFacts]:
    """The history's rows (Transaction columns) as the feature code's transaction type, in row order."""
    devices = history["device_id"].astype(object).where(history["device_id"].notna(), None)
    return [
        TransactionFacts(*row)
        for row in zip(
            history["event_id"].tolist(),
            history["account_id"].tolist(),
            history["merchant_id"].tolist(),
            history["merchant_category"].tolist(),
            history["amount"].astype(float).tolist(),
            history["currency"].tolist(),
            history["country"].tolist(),
            history["channel"].tolist(),
            devices.tolist(),
            epoch_seconds(history["event_time"]).tolist(),
            strict=True,
        )
    ]
