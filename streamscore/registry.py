"""The MLflow model registry as the services read it: aliases, versions and their verified files.

Training writes versions (training/registry.py); the scorer and the API read them through this module, so
no service imports another. A version's artifact folder holds `model.onnx`, `features.json` (the ordered
inputs and the feature service) and `reference.json` (the drift reference); the version's `sha256` tag is
the checksum of `model.onnx`, its `review_threshold` / `decline_threshold` tags its operating point
(`streamscore.thresholds`). Files are cached per version on local disk and re-verified on every use.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamscore.errors import StreamscoreError
from streamscore.infra.settings import PROJECT_ROOT
from streamscore.thresholds import Thresholds, from_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_DIR = "model"
"""Artifact folder of a run that the model version points to."""
MODEL_FILE = "model.onnx"
FEATURES_FILE = "features.json"
REFERENCE_FILE = "reference.json"
MLFLOW_DIR = PROJECT_ROOT / "data" / "mlflow"
DEFAULT_TRACKING_URI = f"sqlite:///{MLFLOW_DIR / 'mlflow.db'}"
DEFAULT_MODEL_NAME = "fraud-detector"


class RegistrySettings(BaseSettings):
    """Where the serving side finds models (`REGISTRY_…`)."""

    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="forbid", use_attribute_docstrings=True)

    tracking_uri: str = DEFAULT_TRACKING_URI
    """MLflow tracking/registry URI: the local SQLite store by default, or a server such as http://127.0.0.1:5000."""
    model_name: str = Field(default=DEFAULT_MODEL_NAME, min_length=1)
    """Registered model whose aliases the scorer serves."""
    cache_dir: Path = MLFLOW_DIR / "cache"
    """Local cache of downloaded model files, one folder per version (checksums re-verified on every load)."""


class ModelIntegrityError(StreamscoreError):
    """A downloaded model file does not have the checksum the registry recorded."""

    def __init__(self, name: str, version: str, expected: str, actual: str) -> None:
        super().__init__(f"{name} version {version}: model.onnx has SHA-256 {actual}, the registry says {expected}")


class AliasNotFoundError(StreamscoreError):
    """No version of the registered model carries the alias."""

    http_status = 404

    def __init__(self, name: str, alias: str) -> None:
        super().__init__(
            f"registered model {name!r} has no version with alias {alias!r} "
            "(train one first: `streamscore train`, or check REGISTRY_MODEL_NAME / REGISTRY_TRACKING_URI)"
        )


class RegistryUnavailableError(StreamscoreError):
    """The tracking server / registry database could not be reached."""

    retryable = True
    http_status = 503

    def __init__(self, uri: str, problem: str) -> None:
        super().__init__(
            f"MLflow registry at {uri} unreachable: {problem}. Start the tracking server it names, or point "
            "REGISTRY_TRACKING_URI at the registry `streamscore train` writes to"
        )


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """One registered version's verified local files."""

    name: str
    version: str
    onnx_path: Path
    sha256: str
    feature_service: str
    feature_names: tuple[str, ...]
    run_id: str


def sha256_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """A client on `tracking_uri` (also the registry URI); a local SQLite store gets its folder created."""
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias → version of the registered model `name` (empty when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def download(client: MlflowClient, source: str, file: str, dst: Path) -> Path:
    # A progress bar per small file only clutters a service's log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.artifacts import download_artifacts

    dst.mkdir(parents=True, exist_ok=True)
    return Path(
        download_artifacts(artifact_uri=f"{source}/{file}", dst_path=str(dst), tracking_uri=client.tracking_uri)
    )


class Registry:
    """Read side of the registry for one registered model."""

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self.settings = settings or RegistrySettings()
        self.name = self.settings.model_name
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = mlflow_client(self.settings.tracking_uri)
        return self._client

    def aliases(self) -> dict[str, str]:
        """alias → version now; RegistryUnavailableError when the store cannot be read."""
        try:
            return aliases(self.client, self.name)
        except StreamscoreError:
            raise
        except Exception as exc:  # MLflow raises many types for an unreachable store
            raise RegistryUnavailableError(self.settings.tracking_uri, f"{type(exc).__name__}: {exc}") from exc

    def version_of(self, alias: str) -> str:
        version = self.aliases().get(alias)
        if version is None:
            raise AliasNotFoundError(self.name, alias)
        return version

    def files(self, version: str) -> ModelFiles:
        """The verified local files of `version` (downloaded into the cache unless already there and intact)."""
        mv = self.client.get_model_version(self.name, version)
        tags = dict(mv.tags or {})
        expected = tags.get("sha256", "")
        folder = self.settings.cache_dir / self.name / version
        path = folder / MODEL_FILE
        if not (path.exists() and sha256_file(path) == expected):
            path = download(self.client, str(mv.source), MODEL_FILE, folder)
        actual = sha256_file(path)
        if actual != expected:
            raise ModelIntegrityError(self.name, version, expected, actual)
        features_path = folder / FEATURES_FILE
        if not features_path.exists():
            features_path = download(self.client, str(mv.source), FEATURES_FILE, folder)
        document = json.loads(features_path.read_text())
        return ModelFiles(
            name=self.name,
            version=version,
            onnx_path=path,
            sha256=actual,
            feature_service=str(document["feature_service"]),
            feature_names=tuple(document["feature_names"]),
            run_id=str(mv.run_id or ""),
        )

    def tags(self, version: str) -> dict[str, str]:
        """The version's tags now (its checksum, feature service, metrics, operating point...)."""
        return dict(self.client.get_model_version(self.name, version).tags or {})

    def thresholds(self, version: str) -> Thresholds:
        """The version's operating point as its tags say now (`streamscore.thresholds.from_tags`): read at every
        alias resolution and hot-reload check, so a re-tagged version changes its decisions like a model swap."""
        return from_tags(self.tags(version))

    def reference(self, version: str, dst: Path | None = None) -> dict[str, Any]:
        """reference.json of a version (frozen drift bins and a reference sample)."""
        mv = self.client.get_model_version(self.name, version)
        folder = dst or self.settings.cache_dir / self.name / version
        document: dict[str, Any] = json.loads(download(self.client, str(mv.source), REFERENCE_FILE, folder).read_text())
        return document
