"""The offline sources: point-in-time correct windows, smoothed merchant risk, and a real-time log that is
exactly the stream processor's own state code replayed over the history."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import feature_repo.batch as batch
from feature_repo.batch import (
    PRIOR_FRAUD_RATE,
    PRIOR_WEIGHT,
    PROFILE_COLUMNS,
    REALTIME_COLUMNS,
    HistoryNotFoundError,
    account_profiles,
    batch_range,
    build_batch_sources,
    merchant_risk,
    realtime_log,
    snapshot_days,
)
from streamscore.features import (
    KNOWN_LIMIT,
    AccountProfile,
    AccountState,
    MerchantRisk,
    RealtimeSnapshot,
    TransactionFacts,
    apply_transaction,
    replay,
)
from streamscore.frames import transaction_facts

T = datetime(2026, 3, 10, tzinfo=UTC)
"""A snapshot instant."""
US = timedelta(microseconds=1)


def tx_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    """Transactions with the history's columns; unspecified fields get harmless defaults."""
    defaults: dict[str, object] = {
        "merchant_id": "m1",
        "merchant_category": "5411",
        "amount": 10.0,
        "currency": "EUR",
        "country": "FR",
        "channel": "pos",
        "device_id": None,
        "is_fraud": False,
    }
    full = [{**defaults, **row} for row in rows]
    for i, row in enumerate(full):
        row.setdefault("event_id", f"e{i:04d}")
    frame = pd.DataFrame(full)
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True).dt.as_unit("us")
    return frame


def labels_for(transactions: pd.DataFrame, delay: timedelta) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": transactions["event_id"],
            "account_id": transactions["account_id"],
            "is_fraud": transactions["is_fraud"].astype(bool),
            "event_time": transactions["event_time"],
            "labeled_at": transactions["event_time"] + pd.Timedelta(delay),
        }
    )


def row_at(frame: pd.DataFrame, key: str, entity: str, when: datetime) -> pd.Series:
    match = frame[(frame[key] == entity) & (frame["event_timestamp"] == pd.Timestamp(when))]
    assert len(match) == 1, f"expected one row for {entity} at {when}, got {len(match)}"
    return match.iloc[0]


# --- account profiles --------------------------------------------------------------------------------------


def test_profile_counts_only_the_30_days_strictly_before_the_snapshot() -> None:
    transactions = tx_frame(
        [
            {"account_id": "a", "event_time": T - timedelta(days=30) - US, "amount": 1000.0},  # too old for T
            {"account_id": "a", "event_time": T - timedelta(days=30), "amount": 10.0},  # first instant inside
            {"account_id": "a", "event_time": T - US, "amount": 20.0},  # last instant inside
            {"account_id": "a", "event_time": T, "amount": 5000.0},  # at T: belongs to the next snapshot
            {"account_id": "a", "event_time": T + timedelta(hours=3), "amount": 7000.0},
        ]
    )
    profiles = account_profiles(transactions, [T, T + timedelta(days=1)])
    at_t = row_at(profiles, "account_id", "a", T)
    assert at_t["tx_count_30d"] == 2
    assert at_t["amount_mean_30d"] == pytest.approx(15.0)
    assert at_t["amount_std_30d"] == pytest.approx(np.std([10.0, 20.0], ddof=1))
    next_day = row_at(profiles, "account_id", "a", T + timedelta(days=1))
    assert next_day["tx_count_30d"] == 3  # the 10.0 at T-30d has left, 5000 and 7000 joined
    assert next_day["amount_mean_30d"] == pytest.approx((20.0 + 5000.0 + 7000.0) / 3)
    assert list(profiles.columns) == list(PROFILE_COLUMNS)
    assert str(profiles["event_timestamp"].dtype) == "datetime64[us, UTC]"


def test_profile_has_no_row_without_transactions_in_the_window_and_std_zero_for_one() -> None:
    transactions = tx_frame(
        [
            {"account_id": "old", "event_time": T - timedelta(days=40)},
            {"account_id": "one", "event_time": T - timedelta(days=1), "amount": 0.1},
            {"account_id": "same", "event_time": T - timedelta(days=2), "amount": 0.1},
            {"account_id": "same", "event_time": T - timedelta(days=1), "amount": 0.1},
            {"account_id": "same", "event_time": T - timedelta(hours=1), "amount": 0.1},
        ]
    )
    profiles = account_profiles(transactions, [T])
    assert set(profiles["account_id"]) == {"one", "same"}
    assert row_at(profiles, "account_id", "one", T)["amount_std_30d"] == 0.0
    # Constant amounts: exactly 0, not floating-point noise (the model divides by the std when it is > 0).
    assert row_at(profiles, "account_id", "same", T)["amount_std_30d"] == 0.0


def test_usual_countries_and_devices_are_ranked_by_frequency_then_name_and_capped() -> None:
    rows: list[dict[str, object]] = []
    for country, count in (("DE", 3), ("FR", 3), ("AT", 1), ("ES", 5)):
        rows += [{"account_id": "a", "event_time": T - timedelta(hours=len(rows) + 1), "country": country}] * count
    rows += [
        {"account_id": "a", "event_time": T - timedelta(days=2), "device_id": f"d{i:02d}"}
        for i in range(KNOWN_LIMIT + 4)
    ]
    rows += [{"account_id": "a", "event_time": T - timedelta(days=3), "device_id": "d19"}]
    rows += [{"account_id": "b", "event_time": T - timedelta(days=1), "country": "IT"}]
    profiles = account_profiles(tx_frame(rows), [T])
    a = row_at(profiles, "account_id", "a", T)
    # FR: 3 + the device rows' default country FR (21) → the most frequent
    assert list(a["usual_countries"]) == ["FR", "ES", "DE", "AT"]
    assert a["home_country"] == "FR"
    assert a["usual_devices"][0] == "d19"  # seen twice
    assert len(a["usual_devices"]) == KNOWN_LIMIT
    assert list(a["usual_devices"])[1:] == [f"d{i:02d}" for i in range(KNOWN_LIMIT - 1)]  # ties by name
    b = row_at(profiles, "account_id", "b", T)
    assert list(b["usual_devices"]) == []  # no device on any transaction
    assert (b["home_country"], list(b["usual_countries"])) == ("IT", ["IT"])


Expected = tuple[int, float, float, list[str]]


def brute_force_profiles(transactions: pd.DataFrame, days: list[datetime]) -> dict[tuple[str, datetime], Expected]:
    out: dict[tuple[str, datetime], Expected] = {}
    for day in days:
        window = transactions[
            (transactions["event_time"] >= pd.Timestamp(day - timedelta(days=30)))
            & (transactions["event_time"] < pd.Timestamp(day))
        ]
        for account, rows in window.groupby("account_id"):
            amounts = rows["amount"].to_numpy()
            std = float(np.std(amounts, ddof=1)) if len(amounts) > 1 else 0.0
            counts = {str(c): int(k) for c, k in rows["country"].value_counts().items()}
            ranked = sorted(counts, key=lambda c: (-counts[c], c))[:KNOWN_LIMIT]
            out[(str(account), day)] = (len(amounts), float(amounts.mean()), std, ranked)
    return out


def test_profiles_match_a_brute_force_computation_on_random_data() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    start = T - timedelta(days=45)
    transactions = tx_frame(
        [
            {
                "account_id": f"a{rng.integers(40)}",
                "event_time": start + timedelta(seconds=float(rng.uniform(0, 50 * 86400))),
                "amount": float(np.round(rng.lognormal(3, 1), 2)),
                "country": str(rng.choice(["FR", "DE", "ES", "IT", "PL"])),
            }
            for _ in range(n)
        ]
    )
    days = snapshot_days(transactions)
    profiles = account_profiles(transactions, days)
    expected = brute_force_profiles(transactions, days)
    assert len(profiles) == len(expected)
    for row in profiles.to_dict("records"):
        count, mean, std, countries = expected[(row["account_id"], row["event_timestamp"].to_pydatetime())]
        assert row["tx_count_30d"] == count
        assert row["amount_mean_30d"] == pytest.approx(mean, abs=1e-6)
        assert row["amount_std_30d"] == pytest.approx(std, abs=1e-6)
        assert list(row["usual_countries"]) == countries


def test_snapshot_days_run_from_the_day_after_the_first_event_to_the_day_after_the_last() -> None:
    transactions = tx_frame(
        [
            {"account_id": "a", "event_time": datetime(2026, 1, 1, 23, 59, tzinfo=UTC)},
            {"account_id": "a", "event_time": datetime(2026, 1, 4, 0, 0, tzinfo=UTC)},
        ]
    )
    assert snapshot_days(transactions) == [datetime(2026, 1, d, tzinfo=UTC) for d in (2, 3, 4, 5)]
    with pytest.raises(ValueError, match="timezone-aware"):
        account_profiles(transactions, [datetime(2026, 1, 2)])


# --- merchant risk -----------------------------------------------------------------------------------------


def smoothed(frauds: float, labelled: float) -> float:
    return (frauds + PRIOR_FRAUD_RATE * PRIOR_WEIGHT) / (labelled + PRIOR_WEIGHT)


def test_merchant_risk_counts_only_labels_known_at_the_snapshot() -> None:
    transactions = tx_frame(
        [
            {"account_id": "a", "merchant_id": "m", "event_time": T - timedelta(hours=5), "is_fraud": True},
            {"account_id": "b", "merchant_id": "m", "event_time": T - timedelta(hours=4), "is_fraud": True},
            {"account_id": "c", "merchant_id": "m", "event_time": T - timedelta(hours=3), "is_fraud": False},
            {"account_id": "d", "merchant_id": "m", "event_time": T, "is_fraud": True},  # at T: not in the window
        ]
    )
    labels = labels_for(transactions, timedelta(0))
    labels.loc[0, "labeled_at"] = pd.Timestamp(T)  # known exactly at T: counts (labeled_at <= T)
    labels.loc[1, "labeled_at"] = pd.Timestamp(T + US)  # known 1 µs after T: does not count at T
    risk = merchant_risk(transactions, labels, [T, T + timedelta(days=1)])
    at_t = row_at(risk, "merchant_id", "m", T)
    assert at_t["tx_count_30d"] == 3
    assert at_t["fraud_rate_30d"] == pytest.approx(smoothed(frauds=1, labelled=2))
    next_day = row_at(risk, "merchant_id", "m", T + timedelta(days=1))
    assert next_day["tx_count_30d"] == 4
    assert next_day["fraud_rate_30d"] == pytest.approx(smoothed(frauds=3, labelled=4))


def test_merchant_risk_is_smoothed_towards_the_prior() -> None:
    tiny = [{"account_id": "a", "merchant_id": "tiny", "event_time": T - timedelta(days=1), "is_fraud": True}]
    big = [
        {"account_id": "a", "merchant_id": "big", "event_time": T - timedelta(minutes=i + 1), "is_fraud": i % 10 == 0}
        for i in range(2000)
    ]
    pending = [{"account_id": "a", "merchant_id": "pending", "event_time": T - timedelta(minutes=1), "is_fraud": True}]
    transactions = tx_frame(tiny + big + pending)
    labels = labels_for(transactions, timedelta(0))
    labels.loc[transactions["merchant_id"] == "pending", "labeled_at"] = pd.Timestamp(T + timedelta(hours=1))
    risk = merchant_risk(transactions, labels, [T])
    tiny_rate = row_at(risk, "merchant_id", "tiny", T)["fraud_rate_30d"]
    assert tiny_rate == pytest.approx(smoothed(1, 1))
    assert PRIOR_FRAUD_RATE < tiny_rate < 0.1  # one fraud out of one is not a 100 % fraud merchant
    big_rate = row_at(risk, "merchant_id", "big", T)["fraud_rate_30d"]
    assert big_rate == pytest.approx(smoothed(200, 2000))
    assert abs(big_rate - 0.1) < 0.001  # enough evidence: close to the raw 10 %
    pending_row = row_at(risk, "merchant_id", "pending", T)
    assert pending_row["fraud_rate_30d"] == pytest.approx(PRIOR_FRAUD_RATE)  # no label known yet: the prior
    assert pending_row["tx_count_30d"] == 1


def test_merchant_risk_matches_a_brute_force_computation_on_random_data() -> None:
    rng = np.random.default_rng(9)
    n = 2000
    start = T - timedelta(days=40)
    transactions = tx_frame(
        [
            {
                "account_id": "a",
                "merchant_id": f"m{rng.integers(15)}",
                "event_time": start + timedelta(seconds=float(rng.uniform(0, 45 * 86400))),
                "is_fraud": bool(rng.random() < 0.2),
            }
            for _ in range(n)
        ]
    )
    labels = labels_for(transactions, timedelta(0))
    labels["labeled_at"] = labels["event_time"] + pd.to_timedelta(rng.uniform(0, 5 * 86400, n), unit="s")
    days = snapshot_days(transactions)
    risk = merchant_risk(transactions, labels, days)
    joined = transactions.merge(labels[["event_id", "labeled_at"]], on="event_id")
    checked = 0
    for day in days:
        stamp = pd.Timestamp(day)
        window = joined[(joined["event_time"] >= stamp - pd.Timedelta(days=30)) & (joined["event_time"] < stamp)]
        for merchant, rows in window.groupby("merchant_id"):
            known = rows[rows["labeled_at"] <= stamp]
            row = row_at(risk, "merchant_id", str(merchant), day)
            assert row["tx_count_30d"] == len(rows)
            assert row["fraud_rate_30d"] == pytest.approx(smoothed(known["is_fraud"].sum(), len(known)))
            checked += 1
    assert checked == len(risk) > 100


# --- the real-time log -------------------------------------------------------------------------------------


def scripted() -> pd.DataFrame:
    base = T - timedelta(hours=30)
    return tx_frame(
        [
            {"event_id": "x1", "account_id": "a", "event_time": base, "amount": 12.5, "device_id": "d1"},
            {"event_id": "x2", "account_id": "b", "event_time": base + timedelta(minutes=1), "country": "DE"},
            {"event_id": "x3", "account_id": "a", "event_time": base + timedelta(minutes=2), "merchant_id": "m2"},
            {"event_id": "x4", "account_id": "a", "event_time": base + timedelta(minutes=50), "device_id": "d2"},
            {"event_id": "x5", "account_id": "a", "event_time": base + timedelta(hours=25), "amount": 99.99},
            {"event_id": "x6", "account_id": "b", "event_time": base + timedelta(hours=25), "amount": 1.0},
            # given out of order: the log sorts by (event time, event id) like replay()
            {"event_id": "x8", "account_id": "a", "event_time": base + timedelta(hours=26), "country": "ES"},
            {"event_id": "x7", "account_id": "a", "event_time": base + timedelta(hours=26), "amount": 3.0},
            # a redelivery of x2: the state refuses it, so it adds no row
            {"event_id": "x2", "account_id": "b", "event_time": base + timedelta(minutes=1), "country": "DE"},
        ]
    )


def by_hand(transactions: pd.DataFrame) -> list[tuple[str, datetime, RealtimeSnapshot]]:
    """apply_transaction step by step, as the stream processor would see the events."""
    order = sorted(range(len(transactions)), key=lambda i: (transactions["event_time"][i], transactions["event_id"][i]))
    states: dict[str, AccountState] = {}
    expected = []
    for i in order:
        row = transactions.iloc[i]
        tx = TransactionFacts(
            event_id=row["event_id"],
            account_id=row["account_id"],
            merchant_id=row["merchant_id"],
            merchant_category=row["merchant_category"],
            amount=float(row["amount"]),
            currency=row["currency"],
            country=row["country"],
            channel=row["channel"],
            device_id=row["device_id"],
            event_ts=row["event_time"].to_pydatetime().timestamp(),
        )
        state = states.setdefault(tx.account_id, AccountState())
        if apply_transaction(state, tx):
            expected.append((tx.account_id, row["event_time"].to_pydatetime(), state.snapshot()))
    # Two transactions of one account at the same instant: one row, the state after both.
    last = {(account, when): i for i, (account, when, _) in enumerate(expected)}
    return [expected[i] for i in sorted(last.values())]


def snapshot_of(row: pd.Series) -> RealtimeSnapshot:
    fields = {f.name: row[f.name] for f in dataclasses.fields(RealtimeSnapshot)}
    fields["known_devices"] = tuple(fields["known_devices"])
    fields["known_countries"] = tuple(fields["known_countries"])
    return RealtimeSnapshot(**fields)


def test_realtime_log_is_apply_transaction_replayed_by_hand() -> None:
    transactions = scripted()
    log = realtime_log(transactions)
    expected = by_hand(transactions)
    assert len(expected) == 7  # 9 rows - the redelivery - one of the two at the same instant
    rows = log.to_dict("records")
    assert [(r["account_id"], r["event_timestamp"].to_pydatetime()) for r in rows] == [(a, w) for a, w, _ in expected]
    for (_, _, snapshot), (_, row) in zip(expected, log.iterrows(), strict=True):
        assert snapshot_of(row) == snapshot
    # The row produced BY a transaction carries its own timestamp and includes it.
    first = log.iloc[0]
    assert first["event_timestamp"] == pd.Timestamp(T - timedelta(hours=30))
    assert (first["tx_count_5m"], first["amount_sum_5m"], list(first["known_devices"])) == (1, 12.5, ["d1"])
    assert list(log.columns) == list(REALTIME_COLUMNS)
    assert [f.name for f in dataclasses.fields(RealtimeSnapshot)] == list(REALTIME_COLUMNS[1:-1])


def test_realtime_log_in_worker_processes_is_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    transactions = tx_frame(
        [
            {
                "account_id": f"a{rng.integers(30)}",
                "event_time": T + timedelta(seconds=float(rng.uniform(0, 3 * 86400))),
                "amount": float(np.round(rng.uniform(1, 100), 2)),
                "device_id": str(rng.choice(["d1", "d2", "d3"])) if rng.random() < 0.5 else None,
            }
            for _ in range(600)
        ]
    )
    serial = realtime_log(transactions)
    monkeypatch.setattr(batch, "_PARALLEL_MIN_ROWS", 0)
    seen: list[int] = []
    parallel = realtime_log(transactions, seen.append, workers=2)
    pd.testing.assert_frame_equal(parallel, serial)
    assert seen[-1] == len(transactions)


def test_feature_columns_are_the_dataclass_fields() -> None:
    assert [f.name for f in dataclasses.fields(AccountProfile)] == list(PROFILE_COLUMNS[1:-2])
    assert [f.name for f in dataclasses.fields(MerchantRisk)] == list(batch.MERCHANT_COLUMNS[1:-2])


# --- building the files ------------------------------------------------------------------------------------


def test_build_batch_sources_writes_the_three_files(tmp_path: Path) -> None:
    transactions = scripted()
    history = tmp_path / "history"
    history.mkdir()
    transactions.to_parquet(history / "transactions.parquet")
    labels_for(transactions.drop_duplicates("event_id"), timedelta(seconds=30)).to_parquet(history / "labels.parquet")
    steps: list[str] = []
    summary = build_batch_sources(history, tmp_path / "features", lambda step, done, total: steps.append(step))
    states = pq.read_table(summary.paths["account_state"]).to_pydict()
    assert states["account_id"] == sorted(set(transactions["account_id"]))
    assert summary.transactions == len(transactions)
    assert summary.realtime_rows == 7
    assert summary.snapshots == len(snapshot_days(transactions))
    assert {"read", "realtime", "profiles", "merchants", "write"} <= set(steps)
    realtime = pq.read_table(summary.paths["account_realtime"])
    assert realtime.schema.field("known_devices").type.value_type.equals("string")
    assert realtime.num_rows == 7
    assert pq.read_table(summary.paths["account_profile"]).num_rows == summary.profile_rows > 0
    assert pq.read_table(summary.paths["merchant_risk"]).num_rows == summary.merchant_rows > 0
    first, last = batch_range(tmp_path / "features")
    assert first == transactions["event_time"].min().to_pydatetime()
    assert last == snapshot_days(transactions)[-1]


def test_missing_history_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryNotFoundError, match="streamscore produce --history"):
        build_batch_sources(tmp_path, tmp_path / "features")
    with pytest.raises(batch.BatchSourcesMissingError, match="features batch"):
        batch_range(tmp_path)


def test_final_states_are_each_accounts_state_after_the_history_and_continue_it_like_the_processor() -> None:
    """The seed of the feature processor (FEATURES_SEED_PATH): folding a later transaction into an account's final
    state gives the snapshot a replay of the history plus that transaction gives."""
    transactions = scripted()
    states: dict[str, str] = {}
    log = realtime_log(transactions, final_states=states)
    assert set(states) == set(log["account_id"])
    for account, raw in states.items():
        state = AccountState.from_dict(json.loads(raw))
        mine = log[log["account_id"] == account]
        assert state.snapshot() == snapshot_of(mine.iloc[-1])
    later = TransactionFacts("later", "a", "m9", "5411", 5.0, "EUR", "DE", "ecommerce", "d9", T.timestamp() + 60.0)
    seeded = AccountState.from_dict(json.loads(states["a"]))
    # What the online store held just before `later`, replaying the history offline, is the seed's snapshot...
    assert replay([*transaction_facts(transactions), later])[-1] == seeded.snapshot()
    # ... and folding `later` into the seed gives what folding the whole history and `later` gives.
    whole = AccountState()
    for facts in sorted(transaction_facts(transactions), key=lambda f: (f.event_ts, f.event_id)):
        if facts.account_id == "a":
            apply_transaction(whole, facts)
    assert apply_transaction(seeded, later) and apply_transaction(whole, later)
    assert seeded.snapshot() == whole.snapshot()
