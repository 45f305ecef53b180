"""Training through the real Feast repository (DuckDB offline store, SQLite online store, no Redis): `train`'s
default path is Feast's historical retrieval, and it gives exactly the model inputs of the in-process join —
including the rows whose real-time state has expired (TTL) and across the chunks of the retrieval."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from feature_repo.batch import build_batch_sources
from feature_repo.settings import FeastSettings
from feature_repo.store import apply, open_store
from producers.generator import GeneratorConfig, TransactionGenerator
from producers.history import write_history
from producers.world import build_world
from training import dataset
from training.dataset import column, entity_frame, feature_matrix, joined_frame, load_history, local_joined_frame
from training.pipeline import train
from training.settings import TrainingSettings


@pytest.fixture(scope="module")
def feast_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FeastSettings]:
    """Five quiet days (200 accounts, 60 merchants, 5 % fraud: some accounts stay idle for longer than the 2-day
    TTL), their offline sources, an applied registry."""
    root = tmp_path_factory.mktemp("training-feast")
    generator = TransactionGenerator(
        build_world(5, accounts=200, merchants=60), GeneratorConfig(seed=5, fraud_rate=0.05)
    )
    end = datetime(2026, 3, 4, tzinfo=UTC)
    write_history(generator, 5, root / "history", end=end, rate_per_s=0.01, label_delay=timedelta(hours=2))
    settings = FeastSettings(
        project=f"t_{uuid.uuid4().hex[:12]}",
        data_dir=root / "features",
        registry_path=root / "feast" / "registry.db",
        online_store="sqlite",
        sqlite_path=root / "feast" / "online.db",
    )
    build_batch_sources(root / "history", settings.data_dir, workers=1)
    apply(open_store(settings), settings.data_dir)
    return root / "history", settings


def test_train_through_feast_equals_the_in_process_join(
    feast_repo: tuple[Path, FeastSettings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history_dir, feast = feast_repo
    # `train` reads FeastSettings from the environment, as `streamscore train` does.
    monkeypatch.setenv("FEAST_PROJECT", feast.project)
    monkeypatch.setenv("FEAST_DATA_DIR", str(feast.data_dir))
    monkeypatch.setenv("FEAST_REGISTRY_PATH", str(feast.registry_path))
    monkeypatch.setenv("FEAST_ONLINE_STORE", "sqlite")
    monkeypatch.setenv("FEAST_SQLITE_PATH", str(feast.sqlite_path))
    history = load_history(history_dir)
    joined: list[pd.DataFrame] = []

    def recording(*args: Any, **kwargs: Any) -> pd.DataFrame:
        joined.append(joined_frame(*args, **{**kwargs, "chunk_rows": 1000}))  # several retrievals, not one
        return joined[-1]

    monkeypatch.setattr(dataset, "joined_frame", recording)
    settings = TrainingSettings(
        history_dir=history_dir,
        epochs=2,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        mlflow_artifact_dir=tmp_path / "artifacts",
        min_test_pr_auc=0.1,
        min_test_roc_auc=0.5,
        max_test_ece=0.5,
        reference_sample_size=100,
    )
    assert settings.feature_join == "feast"  # the default
    result = train(settings)
    assert result.registration.aliases == ("champion",)
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    assert client.get_run(result.registration.run_id).data.params["feature_join"] == "feast"

    # What Feast returned is, column by column and row by row, what the in-process join computes.
    (via_feast,) = joined
    local = local_joined_frame(history, "fraud_v1")
    assert list(via_feast.columns) == list(local.columns)
    for name in via_feast.columns:
        assert via_feast[name].isna().tolist() == local[name].isna().tolist(), name
    feast_x = feature_matrix(history, via_feast).x
    np.testing.assert_array_equal(feast_x, feature_matrix(history, local).x)
    assert len(np.unique(feast_x[:, 4])) > 1  # not trivially equal: tx_count_5m varies
    # The TTL path is exercised: accounts seen before whose real-time state expired, their profile still joined.
    expired = (
        history["account_id"].duplicated().to_numpy() & via_feast[column("account_realtime", "tx_count_5m")].isna()
    )
    assert expired.sum() >= 3
    assert via_feast.loc[expired, column("account_profile", "amount_mean_30d")].notna().sum() >= 3

    lite = joined_frame(entity_frame(history), "fraud_v1_lite", feast_settings=feast, chunk_rows=1500)
    local_lite = local_joined_frame(history, "fraud_v1_lite")
    assert list(lite.columns) == list(local_lite.columns)
    for name in lite.columns:
        assert lite[name].isna().tolist() == local_lite[name].isna().tolist(), name
    np.testing.assert_array_equal(feature_matrix(history, lite).x, feature_matrix(history, local_lite).x)
