"""The direct Redis reader without a network: its keys and hash fields against Feast's own functions, its value
decoding against Feast's own conversion, and `read` over hashes written by Feast's own `online_write_batch`
(into an in-memory pipeline) and answered by parsing the RESP request the client sends."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from feast import FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key as feast_serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType

from feature_repo.definitions import VIEW_FIELDS, definitions
from feature_repo.layout import (
    MERCHANT_FIELDS,
    MERCHANT_VIEW,
    PROFILE_FIELDS,
    PROFILE_VIEW,
    REALTIME_FIELDS,
    REALTIME_VIEW,
)
from feature_repo.settings import FeastSettings
from feature_repo.store import _number, _strings, repo_config
from scorer.features import make_feature_client, redis_client
from scorer.features.base import FeatureStoreUnavailableError
from scorer.features.redis_client import (
    RedisFeatureClient,
    decode_float,
    decode_int,
    decode_optional_float,
    decode_stamp,
    decode_string,
    decode_strings,
    feature_field,
    redis_key,
    serialize_entity_key,
    timestamp_field,
)
from streamscore.errors import ConfigError, InfraError
from streamscore.features import AccountProfile, MerchantRisk, RealtimeSnapshot
from streamscore.settings import RedisSettings

PROJECT = "unit_project"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
IDS = ["acc-1", "", "ü-ñ-账户", "x" * 300, "with space", "merchant\x00nul", "1234"]


def feast_entity_key(join_key: str, value: str) -> EntityKeyProto:
    return EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=value)])


# --- keys and fields -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", IDS)
@pytest.mark.parametrize("join_key", ["account_id", "merchant_id"])
def test_entity_key_and_redis_key_are_feasts(join_key: str, value: str) -> None:
    proto = feast_entity_key(join_key, value)
    expected = feast_serialize_entity_key(proto, entity_key_serialization_version=3)
    assert serialize_entity_key(join_key, value) == expected
    assert redis_key(PROJECT, join_key, value) == _redis_key(PROJECT, proto, entity_key_serialization_version=3)


def test_the_documented_example_key() -> None:
    # docs/scorer.md spells this key out byte by byte.
    assert redis_key("streamscore", "account_id", "acc-1") == (
        b"\x01\x00\x00\x00\x02\x00\x00\x00\x0a\x00\x00\x00account_id\x02\x00\x00\x00\x05\x00\x00\x00acc-1streamscore"
    )
    assert feature_field("account_realtime", "tx_count_5m") == _mmh3("account_realtime:tx_count_5m")


def test_repo_config_uses_the_serialization_version_the_reader_implements(tmp_path: Path) -> None:
    config = repo_config(FeastSettings(project=PROJECT, registry_path=tmp_path / "r.db", data_dir=tmp_path))
    assert config.entity_key_serialization_version == redis_client.ENTITY_KEY_SERIALIZATION_VERSION
    assert config.registry.enable_online_feature_view_versioning is False  # unversioned view names in fields


def test_hash_fields_are_the_ones_feast_reads_for_our_views(tmp_path: Path) -> None:
    views = {obj.name: obj for obj in definitions(tmp_path) if isinstance(obj, FeatureView)}
    store = RedisOnlineStore()
    feast_fields: dict[str, list[bytes]] = {}
    for name, view in views.items():
        _, hset_keys = store._generate_hset_keys_for_features(view)
        feast_fields[name] = [f if isinstance(f, bytes) else f.encode() for f in hset_keys]
    client = RedisFeatureClient(RedisSettings(port=1), PROJECT)
    assert list(client.account_fields) == feast_fields[REALTIME_VIEW] + feast_fields[PROFILE_VIEW]
    assert list(client.merchant_fields) == feast_fields[MERCHANT_VIEW]
    for view_name, typed_fields in VIEW_FIELDS.items():
        for field_name, _ in typed_fields:
            assert feature_field(view_name, field_name) == _mmh3(f"{view_name}:{field_name}")
        assert timestamp_field(view_name) == f"_ts:{view_name}".encode()


def test_dataclasses_take_the_view_fields_in_layout_order() -> None:
    # RedisFeatureClient builds the dataclasses positionally from the layout's field order.
    pairs = ((RealtimeSnapshot, REALTIME_FIELDS), (AccountProfile, PROFILE_FIELDS), (MerchantRisk, MERCHANT_FIELDS))
    for cls, fields in pairs:
        assert list(cls.__dataclass_fields__) == [name for name, _ in fields]


# --- values --------------------------------------------------------------------------------------------------


def serialized(values: Sequence[Any], value_type: ValueType) -> list[bytes]:
    return [v.SerializeToString() for v in python_values_to_proto_values(list(values), value_type)]


def feast_python(payload: bytes | None) -> Any:
    """What Feast's `OnlineResponse.to_dict()` gives for a stored payload (the reference's input)."""
    proto = ValueProto()
    if payload:
        proto.ParseFromString(payload)
    return feast_value_type_to_python_type(proto)


INTS = [0, 1, 127, 128, 255, 300, 16_384, 2**31, 2**40, -1, -300]
FLOATS = [0.0, -0.0, 1.5, -2.25, 1e-300, 1e300, 0.1 + 0.2, 1_795_525_527.539925, math.nan, math.inf]


def test_int_values_decode_like_read_online() -> None:
    for payload in [*serialized(INTS, ValueType.INT64), b"", None]:
        assert decode_int(payload) == int(_number(feast_python(payload))), payload
    assert decode_int(serialized([300], ValueType.INT64)[0]) == 300
    # An integer column stored as double (a float column in the offline file) is still read the same way.
    for payload in serialized([3.0, 7.9], ValueType.DOUBLE):
        assert decode_int(payload) == int(_number(feast_python(payload)))


def test_float_values_decode_like_read_online() -> None:
    payloads = [*serialized(FLOATS, ValueType.DOUBLE), *serialized([5, -7], ValueType.INT64), b"", None]
    for payload in payloads:
        expected = _number(feast_python(payload))
        got = decode_float(payload)
        assert got == expected and math.copysign(1, got) == math.copysign(1, expected), payload
        raw = feast_python(payload)
        optional = None if raw is None or math.isnan(float(raw)) else float(raw)
        assert decode_optional_float(payload) == optional
    assert decode_optional_float(None) is None
    assert decode_float(serialized([math.nan], ValueType.DOUBLE)[0]) == 0.0


def test_string_values_decode_like_read_online() -> None:
    texts = ["", "FR", "ü-ñ-账户", "a" * 1000]
    for payload in [*serialized(texts, ValueType.STRING), b"", None]:
        assert decode_string(payload) == str(feast_python(payload) or "")
    lists: list[list[str]] = [[], ["FR"], ["dev-1", "dev-2", ""], ["ü", "账户"], [f"d{i}" for i in range(40)]]
    for payload in [*serialized(lists, ValueType.STRING_LIST), b"", None]:
        assert decode_strings(payload) == _strings(feast_python(payload))
    assert decode_strings(serialized([[]], ValueType.STRING_LIST)[0]) == ()


def test_timestamps_decode_to_epoch_seconds() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]

    for moment in (NOW, NOW + timedelta(microseconds=539_925), datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)):
        stamp = Timestamp()
        stamp.FromDatetime(moment)
        assert decode_stamp(stamp.SerializeToString()) == stamp.seconds + stamp.nanos / 1e9
    assert decode_stamp(None) == 0.0
    assert decode_stamp(b"") == 0.0


def test_memoised_decoders_clear_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_client, "_MEMO_LIMIT", 3)
    decode = redis_client._memoised(decode_strings)
    payloads = serialized([[f"c{i}"] for i in range(10)], ValueType.STRING_LIST)
    for _ in range(2):
        assert [decode(p) for p in payloads] == [(f"c{i}",) for i in range(10)]


def test_the_reader_does_not_import_feast() -> None:
    code = "import sys, scorer.features.redis_client as r; r.decode_int(b' \\x03'); sys.exit('feast' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr or "importing the direct reader imported feast"


# --- read over hashes Feast wrote ----------------------------------------------------------------------------


class FakePipeline:
    def __init__(self, hashes: dict[bytes, dict[bytes, bytes]]) -> None:
        self.hashes = hashes

    def __enter__(self) -> FakePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def hset(self, name: bytes, mapping: dict[bytes | str, bytes]) -> None:
        row = self.hashes.setdefault(name, {})
        row.update({k.encode() if isinstance(k, str) else k: v for k, v in mapping.items()})

    def execute(self) -> list[int]:
        return []


class FakeRedis:
    def __init__(self) -> None:
        self.hashes: dict[bytes, dict[bytes, bytes]] = {}

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self.hashes)


def parse_commands(request: bytes) -> list[list[bytes]]:
    """The RESP arrays of bulk strings in `request` (what redis-server would parse)."""
    commands: list[list[bytes]] = []
    pos = 0
    while pos < len(request):
        assert request[pos : pos + 1] == b"*", request[pos : pos + 20]
        end = request.index(b"\r\n", pos)
        count, pos = int(request[pos + 1 : end]), end + 2
        args: list[bytes] = []
        for _ in range(count):
            assert request[pos : pos + 1] == b"$"
            end = request.index(b"\r\n", pos)
            size, pos = int(request[pos + 1 : end]), end + 2
            args.append(request[pos : pos + size])
            assert request[pos + size : pos + size + 2] == b"\r\n"
            pos += size + 2
        commands.append(args)
    return commands


class InMemoryRedisFeatureClient(RedisFeatureClient):
    """The real client; its one round trip is answered from Feast-written hashes instead of a socket."""

    def __init__(self, hashes: dict[bytes, dict[bytes, bytes]], **kwargs: Any) -> None:
        super().__init__(RedisSettings(port=1), PROJECT, **kwargs)
        self.hashes = hashes
        self.requests: list[list[list[bytes]]] = []

    def _round_trip(self, request: bytes, replies: int) -> list[list[bytes | None]]:
        commands = parse_commands(request)
        assert len(commands) == replies
        self.requests.append(commands)
        self.round_trips += 1
        out = []
        for name, key, *fields in commands:
            assert name == b"HMGET"
            row = self.hashes.get(key, {})
            out.append([row.get(f) for f in fields])
        return out


def feast_write(tmp_path: Path, rows: dict[str, list[tuple[str, object, datetime]]]) -> dict[bytes, dict[bytes, bytes]]:
    """Write `rows` (view → [(entity id, dataclass, event time)]) with Feast's own RedisOnlineStore code."""
    config = RepoConfig(
        project=PROJECT,
        provider="local",
        registry={"registry_type": "file", "path": str(tmp_path / "registry.db")},
        online_store={"type": "redis", "connection_string": "127.0.0.1:1", "skip_dedup": True},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=tmp_path,
    )
    views = {obj.name: obj for obj in definitions(tmp_path) if isinstance(obj, FeatureView)}
    store = RedisOnlineStore()
    fake = FakeRedis()
    store._client = fake  # type: ignore[assignment]
    for view_name, entries in rows.items():
        view = views[view_name]
        join_key = "merchant_id" if view_name == MERCHANT_VIEW else "account_id"  # join_keys are set by apply
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]] = []
        for entity, values, moment in entries:
            protos = {
                f.name: python_values_to_proto_values([getattr(values, f.name)], f.dtype.to_value_type())[0]
                for f in view.features
            }
            data.append((feast_entity_key(join_key, entity), protos, moment, None))
        store.online_write_batch(config, view, data, None)
    return fake.hashes


def snapshot(rng: np.random.Generator, last: float | None) -> RealtimeSnapshot:
    return RealtimeSnapshot(
        tx_count_5m=int(rng.integers(0, 5)),
        tx_count_1h=int(rng.integers(0, 400)),
        tx_count_24h=int(rng.integers(0, 100_000)),
        amount_sum_5m=float(rng.uniform(0, 1e3)),
        amount_sum_1h=float(rng.uniform(0, 1e4)),
        amount_sum_24h=float(rng.uniform(0, 1e6)),
        distinct_merchants_1h=int(rng.integers(0, 200)),
        last_event_ts=last,
        known_devices=tuple(f"dev-{rng.integers(100)}" for _ in range(rng.integers(0, 4))),
        known_countries=tuple(str(c) for c in rng.choice(["FR", "DE", "ES"], size=rng.integers(0, 3))),
    )


def test_read_returns_what_feast_wrote_with_one_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    day = NOW - timedelta(hours=12)
    realtime: dict[str, tuple[RealtimeSnapshot, datetime]] = {}
    for i in range(20):
        moment = NOW - timedelta(hours=int(rng.integers(0, 96)), microseconds=int(rng.integers(1_000_000)))
        realtime[f"acc-{i}"] = (snapshot(rng, None if i == 3 else moment.timestamp()), moment)
    profiles = {
        f"acc-{i}": (AccountProfile(float(i), 0.5 * i, i, "FR" if i % 2 else "", ("FR",) * (i % 2), ()), day)
        for i in range(10, 30)
    }
    profiles["acc-old"] = (AccountProfile(1.0, 0.0, 1, "DE", (), ("d",)), NOW - timedelta(days=3))
    merchants = {f"m{i}": (MerchantRisk(0.01 * i, 10 * i), day) for i in range(5)}
    hashes = feast_write(
        tmp_path,
        {
            REALTIME_VIEW: [(k, v, t) for k, (v, t) in realtime.items()],
            PROFILE_VIEW: [(k, v, t) for k, (v, t) in profiles.items()],
            MERCHANT_VIEW: [(k, v, t) for k, (v, t) in merchants.items()],
        },
    )
    accounts = [*realtime, *profiles, "nobody", "nobody"]
    keys = [(accounts[int(rng.integers(len(accounts)))], f"m{rng.integers(7)}") for _ in range(200)]
    keys += [("acc-5", "m1")] * 3
    client = InMemoryRedisFeatureClient(hashes, key_cache_size=8)

    rows = client.read(keys)
    assert client.round_trips == 1
    (commands,) = client.requests
    distinct_accounts = {a for a, _ in keys}
    distinct_merchants = {m for _, m in keys}
    assert len(commands) == len(distinct_accounts) + len(distinct_merchants)  # each entity fetched once
    assert [c[1] for c in commands[: len(distinct_accounts)]] == [
        redis_key(PROJECT, "account_id", a) for a in dict.fromkeys(a for a, _ in keys)
    ]
    for (account, merchant), (rt, profile, risk) in zip(keys, rows, strict=True):
        assert rt == (realtime[account][0] if account in realtime else None)
        assert profile == (profiles[account][0] if account in profiles else None)
        assert risk == (merchants[merchant][0] if merchant in merchants else None)

    # as_of applies each view's 2-day TTL: stamp >= as_of - TTL.
    as_of = [NOW.timestamp()] * len(keys)
    aged = client.read(keys, as_of)
    assert client.round_trips == 2
    ttl = timedelta(days=2).total_seconds()
    expired = 0
    for (account, merchant), (rt, profile, risk) in zip(keys, aged, strict=True):
        if account in realtime:
            fresh = realtime[account][1].timestamp() >= NOW.timestamp() - ttl
            expired += not fresh
            assert rt == (realtime[account][0] if fresh else None)
        assert profile == (profiles[account][0] if account in profiles and account != "acc-old" else None)
        assert risk == (merchants[merchant][0] if merchant in merchants else None)
    assert expired > 0
    later = client.read([("acc-10", "m1")], [(day + timedelta(days=2)).timestamp()])
    assert later[0][1] is not None and later[0][2] is not None  # exactly the TTL old: still present
    later = client.read([("acc-10", "m1")], [(day + timedelta(days=2, microseconds=1)).timestamp()])
    assert later[0][1] is None and later[0][2] is None

    # Batch size and the caches do not change an answer.
    one_by_one = [client.read([key], [t])[0] for key, t in zip(keys, as_of, strict=True)]
    assert one_by_one == aged


def test_read_of_nothing_sends_nothing_and_as_of_must_match() -> None:
    client = InMemoryRedisFeatureClient({})
    assert client.read([]) == []
    assert client.round_trips == 0
    with pytest.raises(ValueError, match="as_of has 1 instants for 2 keys"):
        client.read([("a", "m"), ("b", "m")], [0.0])


# --- settings and errors --------------------------------------------------------------------------------------


def test_make_feature_client(tmp_path: Path) -> None:
    settings = FeastSettings(project=PROJECT, registry_path=tmp_path / "r.db", data_dir=tmp_path / "d")
    client = make_feature_client("redis", settings)  # connects lazily: no Redis needed here
    assert isinstance(client, RedisFeatureClient)
    assert client.project == PROJECT
    client.close()
    sqlite = settings.model_copy(update={"online_store": "sqlite", "sqlite_path": tmp_path / "o.db"})
    with pytest.raises(ConfigError, match="FEAST_ONLINE_STORE"):
        make_feature_client("redis", sqlite)


def test_feast_client_gets_a_client_that_fails_fast(tmp_path: Path) -> None:
    from scorer.features.feast_client import FeastFeatureClient

    settings = FeastSettings(
        project=PROJECT, registry_path=tmp_path / "r.db", data_dir=tmp_path / "d", redis=RedisSettings(port=1)
    )
    client = make_feature_client("feast", settings, connect_timeout_s=0.25, read_timeout_s=0.75)
    assert isinstance(client, FeastFeatureClient)
    online: Any = client.store.provider.online_store
    kwargs = online._client.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"], kwargs["port"]) == (0.25, 0.75, 1)
    assert online._client.get_retry().get_retries() == 0


def test_unavailable_is_a_retryable_infrastructure_error() -> None:
    error = FeatureStoreUnavailableError("Redis at 127.0.0.1:1", "read failed: ConnectionError: refused", "127.0.0.1:1")
    assert isinstance(error, InfraError)
    assert error.retryable and error.http_status == 503
    # Not the local stack's address: starting the local stack would not help; the settings may be wrong.
    assert "Redis at 127.0.0.1:1" in str(error) and "REDIS_HOST / REDIS_PORT" in str(error)
    assert "infra up" not in str(error)
    local = FeatureStoreUnavailableError("Redis at 127.0.0.1:6379", "read failed: refused", "127.0.0.1:6379")
    assert "start it with `streamscore infra up`" in str(local)
    assert "\n" not in str(local)
