"""The Kafka broker's jars: a committed list of Maven coordinates, each with its SHA-256, downloaded from a Maven
repository (Maven Central by default) into a local cache and checked one by one. No Maven needed at run time.

The list (`deploy/local/kafka-jars.txt`) holds one `group:artifact:version sha256` per line; the Kafka version is
the version of its `org.apache.kafka:kafka_<scala>` line, so the pin cannot disagree with what is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamscore.errors import ChecksumError, InfraError

log = logging.getLogger(__name__)

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
MARKER = ".jars-sha256"
"""Holds the digest of the list the cache was filled from: a changed list fetches again."""
_OLD_MARKER = ".kafka-version"  # written by the Maven-based fetch before the list existed
_CHUNK = 1 << 16
_LINE = re.compile(r"^(?P<group>[\w.-]+):(?P<artifact>[\w.-]+):(?P<version>[\w.-]+)\s+(?P<sha256>[0-9a-f]{64})$")
_KAFKA = re.compile(r"^kafka_\d+\.\d+$")

StepCallback = Callable[[str], None]


@dataclass(frozen=True)
class Jar:
    """One jar of the broker's runtime classpath, as Maven Central publishes it (no classifier)."""

    group: str
    artifact: str
    version: str
    sha256: str

    @property
    def coordinates(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version}"

    @property
    def filename(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    def url(self, repository: str) -> str:
        """The jar's address in a repository with Maven's layout (Central, or a mirror of it)."""
        path = "/".join([*self.group.split("."), self.artifact, self.version, self.filename])
        return f"{repository.rstrip('/')}/{path}"


def read_list(path: Path) -> list[Jar]:
    """The jars `path` lists; a malformed line fails with its line number."""
    jars = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise InfraError("kafka jars", f"{path}:{number}: expected 'group:artifact:version sha256', got {raw!r}")
        jars.append(Jar(**match.groupdict()))
    if not jars:
        raise InfraError("kafka jars", f"{path} lists no jars")
    return jars


def kafka_version(jars: list[Jar]) -> str:
    """The Kafka version the list pins: that of its `org.apache.kafka:kafka_<scala>` jar (the broker itself)."""
    versions = {j.version for j in jars if j.group == "org.apache.kafka" and _KAFKA.match(j.artifact)}
    if len(versions) != 1:
        raise InfraError(
            "kafka jars", f"the list must hold exactly one org.apache.kafka:kafka_<scala> jar, got {versions}"
        )
    return versions.pop()


def list_digest(jars: list[Jar]) -> str:
    """A digest of what the list pins (not of its comments or line order)."""
    lines = sorted(f"{j.coordinates} {j.sha256}" for j in jars)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def is_cached(jars: list[Jar], jars_dir: Path) -> bool:
    """True when `jars_dir` was filled from this list and still holds every jar of it."""
    try:
        marker = (jars_dir / MARKER).read_text().strip()
    except FileNotFoundError:
        return False
    return marker == list_digest(jars) and all((jars_dir / j.filename).is_file() for j in jars)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, timeout_s: float = 60.0) -> int:
    """Download `url` to `dest` if its SHA-256 is `sha256`; returns its size in bytes.

    The bytes go to a temporary file beside `dest` (hashed on the way) that becomes `dest` only once the digest
    matches, so neither a wrong file nor half a file is ever left under the jar's name; the temporary file is removed
    whatever happens.
    """
    digest = hashlib.sha256()
    size = 0
    handle, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout_s) as response:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except (urllib.error.URLError, OSError) as exc:
                if isinstance(exc, urllib.error.HTTPError):  # 404, a proxy's refusal
                    reason: object = f"HTTP {exc.code} {exc.reason}"
                else:  # no route, DNS, TLS, a timeout
                    reason = getattr(exc, "reason", None) or exc
                raise InfraError(
                    "kafka jars",
                    f"downloading {url} failed: {reason}. Check the network, or set INFRA_MAVEN_REPOSITORY "
                    "to a mirror of Maven Central",
                ) from exc
        actual = digest.hexdigest()
        if actual != sha256:
            raise ChecksumError(url, expected=sha256, actual=actual)
        tmp.replace(dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return size


def fetch(jars: list[Jar], jars_dir: Path, repository: str = MAVEN_CENTRAL, on_step: StepCallback | None = None) -> int:
    """Make `jars_dir` hold exactly the listed jars, each checked against its SHA-256; returns how many were
    downloaded (0 when the cache was already complete)."""
    step = on_step or (lambda message: log.info("%s", message))
    if is_cached(jars, jars_dir):
        return 0
    jars_dir.mkdir(parents=True, exist_ok=True)
    (jars_dir / MARKER).unlink(missing_ok=True)
    # A jar already there with the pinned digest is kept (a list change fetches only what changed), anything else
    # goes: the broker's classpath is `jars_dir/*`, so a stale jar would be loaded too.
    wanted = {j.filename: j for j in jars}
    for present in jars_dir.glob("*.jar"):
        jar = wanted.get(present.name)
        if jar is None or sha256_of(present) != jar.sha256:
            present.unlink()
    todo = [j for j in jars if not (jars_dir / j.filename).is_file()]
    total = 0
    for number, jar in enumerate(todo, start=1):
        step(f"downloading Kafka jar {number}/{len(todo)}: {jar.filename} from {repository}")
        total += download(jar.url(repository), jars_dir / jar.filename, jar.sha256)
    if todo:
        log.info("downloaded %d Kafka jars (%.1f MB) into %s", len(todo), total / 1e6, jars_dir)
    (jars_dir / _OLD_MARKER).unlink(missing_ok=True)
    (jars_dir / MARKER).write_text(list_digest(jars) + "\n")
    return len(todo)
