"""What the pipeline benchmark feeds the systems it measures: generated transactions, online features for
every account and merchant of the generated world, and a model with the real MLP's shape in a temporary
MLflow registry."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from producers.generator import GeneratorConfig, TransactionGenerator
from producers.world import World, build_world
from streamscore.contracts import Label, headers_for
from streamscore.features import FEATURE_NAMES, RealtimeSnapshot

Record = tuple[bytes, bytes, list[tuple[str, str | bytes | None]], str]
"""(key, value, headers, event_id) of one transaction, serialized once before any measurement."""

LABEL_DELAY = timedelta(seconds=30)
"""The live producer's default label delay (producers.settings: label_delay_s)."""
MODEL_NAME = "fraud-detector"
HIDDEN_SIZES = (64, 32)
"""The MLP of the `v1` training preset (training.settings)."""


@cache
def world(seed: int, accounts: int, merchants: int) -> World:
    return build_world(seed, accounts=accounts, merchants=merchants)


def transactions(
    seed: int,
    count: int,
    start: datetime,
    rate_per_s: float,
    *,
    accounts: int,
    merchants: int,
    labels: list[Record] | None = None,
    label_delay: timedelta = LABEL_DELAY,
) -> list[Record]:
    """`count` generated transactions from `start` on (about `rate_per_s` per second of event time), with
    the headers a producer sends. No daily rhythm: a constant rate, so the load is the same at any hour.

    With `labels`, also appends each transaction's label to it (what `labels` would carry: the generator's
    reported-fraud truth, `labeled_at = event time + label_delay x` the event's delay factor), keyed by account."""
    generator = TransactionGenerator(world(seed, accounts, merchants), GeneratorConfig(seed=seed, rhythm=False))
    out: list[Record] = []
    for event in generator.stream(start, rate_per_s):
        tx = event.transaction
        out.append((tx.account_id.encode(), tx.to_json(), list(headers_for(tx)), tx.event_id))
        if labels is not None:
            label = Label(
                event_id=tx.event_id,
                account_id=tx.account_id,
                is_fraud=event.labeled_fraud,
                fraud_pattern=event.pattern if event.labeled_fraud else None,
                event_time=tx.event_time,
                labeled_at=tx.event_time + label_delay * event.label_delay_factor,
            )
            labels.append((tx.account_id.encode(), label.to_json(), list(headers_for(label)), tx.event_id))
        if len(out) >= count:
            break
    return out


# --- online features --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureData:
    accounts: int
    merchants: int
    realtime_rows: int


def populate_features(
    feast_env: dict[str, str],
    seed: int,
    accounts: int,
    merchants: int,
    as_of: datetime,
    on_step: Callable[[str], None],
) -> FeatureData:
    """Apply the Feast repository to the benchmark's own project and fill its online store: a daily profile
    for every account and a risk row for every merchant (written as the offline files, then materialized,
    as `streamscore features` does), and a real-time snapshot for every account pushed through the push
    source, as the stream processor does. The values are synthetic but plausible (from the world's habits):
    what matters for the benchmark is that every read finds real rows of the real size."""
    from feature_repo.batch import MERCHANT_SCHEMA, PROFILE_SCHEMA, REALTIME_SCHEMA
    from feature_repo.layout import CREATED_FIELD, MERCHANT_FILE, PROFILE_FILE, REALTIME_FILE, TIMESTAMP_FIELD
    from feature_repo.settings import FeastSettings
    from feature_repo.store import BATCH_VIEWS, apply, materialize, open_store, push_realtime
    from streamscore.settings import RedisSettings

    the_world = world(seed, accounts, merchants)
    rng = np.random.default_rng(seed)
    settings = FeastSettings(
        project=feast_env["FEAST_PROJECT"],
        registry_path=Path(feast_env["FEAST_REGISTRY_PATH"]),
        data_dir=Path(feast_env["FEAST_DATA_DIR"]),
        redis=RedisSettings(host=feast_env["REDIS_HOST"], port=int(feast_env["REDIS_PORT"])),
    )
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    day = as_of.replace(hour=0, minute=0, second=0, microsecond=0)
    stamp = pd.Timestamp(day)
    created = pd.Timestamp(as_of)

    on_step(f"writing {len(the_world.accounts)} profiles and {len(the_world.merchants)} merchant rows")
    means = np.array([a.typical_amount for a in the_world.accounts]) * rng.uniform(0.8, 1.25, len(the_world.accounts))
    profiles = pd.DataFrame(
        {
            "account_id": [a.account_id for a in the_world.accounts],
            "amount_mean_30d": np.round(means, 6),
            "amount_std_30d": np.round(means * rng.uniform(0.3, 1.2, len(means)), 6),
            "tx_count_30d": rng.poisson(40, len(means)).astype(np.int64),
            "home_country": [a.country for a in the_world.accounts],
            "usual_countries": [[a.country] for a in the_world.accounts],
            "usual_devices": [list(a.devices) for a in the_world.accounts],
            TIMESTAMP_FIELD: stamp,
            CREATED_FIELD: created,
        }
    )
    risk = pd.DataFrame(
        {
            "merchant_id": [m.merchant_id for m in the_world.merchants],
            "fraud_rate_30d": np.round(rng.beta(1.0, 80.0, len(the_world.merchants)), 6),
            "tx_count_30d": rng.poisson(600, len(the_world.merchants)).astype(np.int64),
            TIMESTAMP_FIELD: stamp,
            CREATED_FIELD: created,
        }
    )
    _write(profiles, PROFILE_SCHEMA, data_dir / PROFILE_FILE)
    _write(risk, MERCHANT_SCHEMA, data_dir / MERCHANT_FILE)
    pq.write_table(REALTIME_SCHEMA.empty_table(), data_dir / REALTIME_FILE)  # pushes only: the log stays empty

    on_step(f"applying the Feast repository to project {settings.project}")
    store = open_store(settings)
    apply(store, data_dir)
    on_step("materializing profiles and merchant risk into Redis")
    materialize(store, day - timedelta(days=1), as_of, views=BATCH_VIEWS)

    on_step(f"pushing {len(the_world.accounts)} real-time snapshots")
    rows: list[tuple[str, RealtimeSnapshot]] = []
    for i, account in enumerate(the_world.accounts):
        n5, n1h, n24 = (int(v) for v in np.cumsum(rng.poisson((0.2, 1.0, 4.0))))
        unit = account.typical_amount
        rows.append(
            (
                account.account_id,
                RealtimeSnapshot(
                    tx_count_5m=n5,
                    tx_count_1h=n1h,
                    tx_count_24h=n24,
                    amount_sum_5m=round(n5 * unit, 6),
                    amount_sum_1h=round(n1h * unit, 6),
                    amount_sum_24h=round(n24 * unit, 6),
                    distinct_merchants_1h=min(n1h, 3),
                    last_event_ts=(as_of - timedelta(seconds=float(rng.uniform(60, 6 * 3600)))).timestamp(),
                    known_devices=tuple(account.devices),
                    known_countries=(account.country,),
                ),
            )
        )
        if len(rows) == 5000 or i == len(the_world.accounts) - 1:
            push_realtime(store, rows)
            rows = []
    return FeatureData(len(the_world.accounts), len(the_world.merchants), len(the_world.accounts))


def _write(frame: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)


# --- the model ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    onnx_path: Path
    """The champion's ONNX file (the naive worker loads it directly)."""
    versions: dict[str, str]
    """alias → registered version."""
    description: str


def mlp_onnx(seed: int, x_sample: np.ndarray) -> bytes:
    """The exported graph of a randomly initialised `training.model` MLP (64, 32) with its preprocessing
    fitted on `x_sample` (NaN defaults, standardization, clipping, Platt scaling, sigmoid): the production
    model's shape and operators, not its weights (the benchmark measures cost, not quality)."""
    import torch

    from training.export import to_onnx
    from training.model import MLP, Preprocessor, ScoringModel

    torch.manual_seed(seed)
    model = ScoringModel(Preprocessor.fit(x_sample, clip=8.0), MLP(len(FEATURE_NAMES), HIDDEN_SIZES, 0.1), 1.0, -3.0)
    return to_onnx(model)


def reference_json(data: bytes, seed: int, x_sample: np.ndarray) -> dict[str, Any]:
    """The monitor's drift reference of a bench model, as training writes it (`training.registry.build_reference`)
    over `x_sample` and the model's own scores of it, so the monitor measures drift as it does in production."""
    import onnxruntime as ort

    from training.registry import build_reference

    x = np.asarray(x_sample, dtype=np.float32)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    scores = np.asarray(session.run(["score"], {"features": x})[0], dtype=np.float64).reshape(-1)
    return build_reference(x, scores, feature_service="fraud_v1", seed=seed, sample_size=min(2000, len(x)))


def register_models(tracking_uri: str, root: Path, seed: int, x_sample: np.ndarray) -> BenchModel:
    """Two versions (champion, challenger: the scorer's default variants), registered like the tests do it:
    a run's `model/` folder with the ONNX file, its feature list and its drift reference (reference.json, which
    the monitor reads), the checksum as a version tag."""
    from mlflow import MlflowClient

    from streamscore.registry import (
        FEATURES_FILE,
        MODEL_DIR,
        MODEL_FILE,
        REFERENCE_FILE,
        mlflow_client,
        sha256_file,
    )

    client: MlflowClient = mlflow_client(tracking_uri)
    experiment_id = client.create_experiment(MODEL_NAME, artifact_location=(root / "artifacts").resolve().as_uri())
    client.create_registered_model(MODEL_NAME)
    versions: dict[str, str] = {}
    champion_path = root / "champion.onnx"
    for offset, alias in enumerate(("champion", "challenger")):
        data = mlp_onnx(seed + offset, x_sample)
        run = client.create_run(experiment_id)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / MODEL_DIR
            folder.mkdir()
            (folder / MODEL_FILE).write_bytes(data)
            (folder / FEATURES_FILE).write_text(
                json.dumps({"feature_service": "fraud_v1", "feature_names": list(FEATURE_NAMES)})
            )
            reference = json.dumps(reference_json(data, seed + offset, x_sample))
            (folder / REFERENCE_FILE).write_text(reference)
            (root / f"reference-{alias}.json").write_text(reference)
            client.log_artifacts(run.info.run_id, str(folder), artifact_path=MODEL_DIR)
            checksum = sha256_file(folder / MODEL_FILE)
        client.set_terminated(run.info.run_id)
        version = str(
            client.create_model_version(
                MODEL_NAME,
                source=f"{run.info.artifact_uri}/{MODEL_DIR}",
                run_id=run.info.run_id,
                tags={"sha256": checksum},
            ).version
        )
        client.set_registered_model_alias(MODEL_NAME, alias, version)
        versions[alias] = version
        if alias == "champion":
            champion_path.write_bytes(data)
    return BenchModel(
        champion_path,
        versions,
        f"randomly initialised MLP {list(HIDDEN_SIZES)} with in-graph preprocessing (training.model), ONNX opset 17",
    )


def feature_sample(records: list[Record], count: int = 2000) -> np.ndarray:
    """Feature rows of the first transactions without online state, to fit the preprocessing statistics."""
    from streamscore.contracts import Transaction
    from streamscore.features import TransactionFacts, transaction_features

    rows = []
    for _, value, _, _ in records[:count]:
        facts = TransactionFacts.of(Transaction.model_validate_json(value))
        rows.append(transaction_features(facts, None, None, None).values)
    return np.asarray(rows, dtype=np.float64)
