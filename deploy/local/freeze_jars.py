"""Regenerate kafka-jars.txt from pom.xml — for a maintainer who bumps Kafka, never needed to run the stack.

    python deploy/local/freeze_jars.py [--lib DIR] > deploy/local/kafka-jars.txt

Maven (`mvn`, only here) resolves the pom's runtime dependency set; each jar's SHA-256 is computed from the copy in
--lib when one is there (e.g. an old cache), else from a download, and every jar is checked against the SHA-1 that
Maven Central publishes beside it before it is listed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from streamscore.infra.jars import MAVEN_CENTRAL, Jar

HERE = Path(__file__).resolve().parent
# `mvn dependency:list` lines: group:artifact:jar:version:scope (a classifier would add a field: none today).
_RESOLVED = re.compile(r"^\s*(?P<group>[\w.-]+):(?P<artifact>[\w.-]+):jar:(?P<version>[\w.-]+):(compile|runtime)\b")


def resolve(pom: Path) -> list[tuple[str, str, str]]:
    mvn = shutil.which("mvn")
    if mvn is None:
        sys.exit("freeze_jars needs Maven (`mvn`) to resolve the pom's dependencies")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "deps.txt"
        argv = [mvn, "-q", "-B", "-f", str(pom), "dependency:list", "-DincludeScope=runtime", f"-DoutputFile={out}"]
        subprocess.run(argv, check=True, stdout=sys.stderr)  # stdout is the list
        lines = out.read_text().splitlines()
    found = [(m["group"], m["artifact"], m["version"]) for line in lines if (m := _RESOLVED.match(line))]
    if not found:
        sys.exit(f"no jars in the output of {' '.join(argv)}")
    return found


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        data: bytes = response.read()
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pom", type=Path, default=HERE / "pom.xml")
    parser.add_argument("--lib", type=Path, default=HERE / "lib", help="jars already downloaded (hashed, not trusted)")
    args = parser.parse_args()

    jars = []
    for group, artifact, version in resolve(args.pom):
        jar = Jar(group, artifact, version, sha256="")
        local = args.lib / jar.filename
        data = local.read_bytes() if local.is_file() else fetch(jar.url(MAVEN_CENTRAL))
        published = fetch(jar.url(MAVEN_CENTRAL) + ".sha1").decode().split()[0].lower()
        if hashlib.sha1(data).hexdigest() != published:  # Central publishes SHA-1 (checked, not kept)
            sys.exit(f"{jar.coordinates}: SHA-1 differs from Maven Central's {published}")
        jars.append(Jar(group, artifact, version, hashlib.sha256(data).hexdigest()))
        sys.stderr.write(f"checked {jar.coordinates}\n")

    header = [
        "# The Kafka broker's runtime jars: `streamscore infra up` (and `make install`) downloads each from Maven",
        "# Central (INFRA_MAVEN_REPOSITORY) into deploy/local/lib/ and keeps it only if its SHA-256 is the one here.",
        "# The Kafka version is that of the org.apache.kafka:kafka_<scala> line. Generated from pom.xml (the runtime",
        "# dependency set Maven resolves for it, each jar checked against the SHA-1 Central publishes) by",
        "#   python deploy/local/freeze_jars.py > deploy/local/kafka-jars.txt",
        "# group:artifact:version sha256",
    ]
    listed = [f"{jar.coordinates} {jar.sha256}" for jar in sorted(jars, key=lambda j: j.coordinates)]
    sys.stdout.write("\n".join([*header, *listed]) + "\n")


if __name__ == "__main__":
    main()
