"""The broker jars: the committed list, and downloads checked against it (a Maven repository on loopback)."""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from streamscore.errors import ChecksumError, InfraError
from streamscore.infra import jars
from streamscore.infra.jars import Jar
from streamscore.infra.kafka import fetch_jars, jars_ready
from streamscore.infra.settings import PROJECT_ROOT, InfraSettings

GOOD = b"PK\x03\x04 not really a jar, but bytes with a known digest"


class Repository:
    """A folder with Maven's layout served over HTTP on loopback; counts the requests it answered."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        repo = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                repo.requests.append(self.path)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/maven2"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def publish(self, jar: Jar, content: bytes) -> None:
        path = self.root / jar.url("maven2")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    repo = Repository(tmp_path / "repo")
    yield repo
    repo.server.shutdown()
    repo.server.server_close()


def jar(content: bytes, artifact: str = "kafka_2.13", version: str = "3.9.1") -> Jar:
    return Jar("org.apache.kafka", artifact, version, hashlib.sha256(content).hexdigest())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_jar_with_the_wrong_digest_is_refused_and_not_kept(repository: Repository, tmp_path: Path) -> None:
    pinned = jar(GOOD)
    repository.publish(pinned, GOOD + b"tampered")
    cache = tmp_path / "lib"
    with pytest.raises(ChecksumError, match=pinned.sha256) as raised:
        jars.fetch([pinned], cache, repository.url)
    assert raised.value.url == pinned.url(repository.url)
    assert "\n" not in raised.value.message
    assert leftovers(cache) == []  # neither the jar, nor its partial download, nor a marker
    assert not jars.is_cached([pinned], cache)


def test_download_checks_and_caches_then_needs_no_network(repository: Repository, tmp_path: Path) -> None:
    pinned = [jar(GOOD), jar(b"the client", artifact="kafka-clients")]
    for j, content in zip(pinned, (GOOD, b"the client"), strict=True):
        repository.publish(j, content)
    cache = tmp_path / "lib"
    steps: list[str] = []
    assert jars.fetch(pinned, cache, repository.url, on_step=steps.append) == 2
    assert (cache / "kafka_2.13-3.9.1.jar").read_bytes() == GOOD
    assert leftovers(cache) == sorted([jars.MARKER, "kafka-clients-3.9.1.jar", "kafka_2.13-3.9.1.jar"])
    assert [s.split(":")[0] for s in steps] == ["downloading Kafka jar 1/2", "downloading Kafka jar 2/2"]
    assert jars.is_cached(pinned, cache)

    served = len(repository.requests)
    assert jars.fetch(pinned, cache, repository.url) == 0
    assert len(repository.requests) == served


def test_a_changed_list_fetches_only_what_changed_and_drops_stale_jars(repository: Repository, tmp_path: Path) -> None:
    old = [jar(GOOD), jar(b"client 3.9.0", artifact="kafka-clients", version="3.9.0")]
    new = [jar(GOOD), jar(b"client 3.9.1", artifact="kafka-clients")]
    for j, content in zip([*old, new[1]], (GOOD, b"client 3.9.0", b"client 3.9.1"), strict=True):
        repository.publish(j, content)
    cache = tmp_path / "lib"
    jars.fetch(old, cache, repository.url)
    (cache / "kafka_2.13-3.9.1.jar").touch()  # untouched content: the digest, not the date, decides
    assert not jars.is_cached(new, cache)

    assert jars.fetch(new, cache, repository.url) == 1
    assert leftovers(cache) == sorted([jars.MARKER, "kafka-clients-3.9.1.jar", "kafka_2.13-3.9.1.jar"])
    assert jars.is_cached(new, cache)


def test_a_cached_jar_whose_bytes_changed_is_downloaded_again(repository: Repository, tmp_path: Path) -> None:
    pinned = [jar(GOOD)]
    repository.publish(pinned[0], GOOD)
    cache = tmp_path / "lib"
    cache.mkdir()
    (cache / "kafka_2.13-3.9.1.jar").write_bytes(b"corrupt")
    assert jars.fetch(pinned, cache, repository.url) == 1
    assert (cache / "kafka_2.13-3.9.1.jar").read_bytes() == GOOD


def test_an_unreachable_jar_names_the_mirror_setting(repository: Repository, tmp_path: Path) -> None:
    cache = tmp_path / "lib"
    with pytest.raises(InfraError, match="INFRA_MAVEN_REPOSITORY") as raised:
        jars.fetch([jar(GOOD)], cache, repository.url)  # never published: 404
    assert "HTTP 404" in raised.value.message
    assert leftovers(cache) == []


def test_fetch_jars_uses_the_settings_list_and_repository(repository: Repository, tmp_path: Path) -> None:
    pinned = jar(GOOD)
    repository.publish(pinned, GOOD)
    listing = tmp_path / "kafka-jars.txt"
    listing.write_text(f"# comment\n\n{pinned.coordinates} {pinned.sha256}  # the broker\n")
    settings = InfraSettings(
        data_dir=tmp_path, jars_list=listing, jars_dir=tmp_path / "lib", maven_repository=repository.url
    )
    assert not jars_ready(settings)
    assert fetch_jars(settings) is True
    assert jars_ready(settings)
    assert fetch_jars(settings) is False


@pytest.mark.parametrize(
    "line",
    [
        "org.apache.kafka:kafka_2.13:3.9.1",  # no digest
        "org.apache.kafka:kafka_2.13 " + "0" * 64,  # no version
        "org.apache.kafka:kafka_2.13:3.9.1 " + "0" * 63,  # a short digest
        "org.apache.kafka:kafka_2.13:3.9.1 " + "A" * 64,  # digests are written in lower case
    ],
)
def test_a_malformed_line_is_named(tmp_path: Path, line: str) -> None:
    listing = tmp_path / "kafka-jars.txt"
    listing.write_text(f"# header\n{line}\n")
    with pytest.raises(InfraError, match=re.escape(f"{listing}:2")):
        jars.read_list(listing)


def test_the_committed_list_pins_the_poms_kafka_and_distinct_jars() -> None:
    listed = jars.read_list(InfraSettings().jars_list)
    pom = (PROJECT_ROOT / "deploy" / "local" / "pom.xml").read_text()
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert match is not None
    # The pom is what the list is regenerated from: a version edited in one must be in the other.
    assert jars.kafka_version(listed) == match.group(1)
    assert len({j.filename for j in listed}) == len(listed)
    assert any(j.artifact == "slf4j-reload4j" for j in listed)
    assert listed[0].url(jars.MAVEN_CENTRAL).startswith("https://repo1.maven.org/maven2/")


def test_a_list_without_the_broker_jar_has_no_version() -> None:
    with pytest.raises(InfraError, match="kafka_<scala>"):
        jars.kafka_version([jar(GOOD, artifact="kafka-clients")])
