"""API benchmark: 64 concurrent clients against `streamscore api`, request batching on vs off.

`python -m bench.api` (or `make bench-api`):

1. starts a real broker and redis-server on free loopback ports (`streamscore.infra.LocalStack`), fills a Feast
   project's online store for every account and merchant of a generated world, and registers champion and
   challenger (the real MLP's shape) in a temporary MLflow — the set-up of `bench.pipeline`;
2. runs the API as a child process (`streamscore api`, uvicorn, one worker) with identical settings except
   `API_BATCHING`, off then on, for `--rounds` rounds (a fresh server each run); audit to Kafka is off in both
   (it is a separate cost, not what is compared);
3. drives each with `wrk` (C, so the load generator does not compete for the server's GIL): 64 connections,
   POST /v1/score with real generated transactions, after a warm-up;
4. reports requests/s, p50/p99 latency, the server's CPU per request and its mean batch size per run, and the
   ratio of the medians batching on / off.

The machine has 2 cores shared by wrk, the API and Redis: the absolute figures are this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench._data import MODEL_NAME, feature_sample, populate_features, register_models, transactions
from bench._probe import process_cpu_s, system_busy_s
from bench.pipeline import free_ports, machine
from streamscore.infra import LocalStack
from streamscore.infra.settings import InfraSettings

RESULTS = Path(__file__).parent / "results"


@dataclass
class Run:
    batching: bool
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int
    server_cpu_us_per_request: float
    other_load_cores: float
    """Cores busy with anything but the server and wrk during the run (broker, Redis, other processes)."""
    mean_batch_size: float | None = None
    """Requests per engine call over the measured run (the server's own `streamscore_api_batch_size`)."""
    feature_ms_per_call: float | None = None
    inference_ms_per_call: float | None = None


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def parse_wrk(output: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for pct in ("50", "90", "99"):
        found = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.M)
        if found:
            out[f"p{pct}_ms"] = _ms(found.group(1))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    out["requests_per_s"] = float(rps.group(1)) if rps else 0.0
    out["requests"] = float(total.group(1)) if total else 0.0
    out["errors"] = float(non2xx.group(1) if non2xx else 0) + (sum(int(g) for g in errors.groups()) if errors else 0)
    return out


def lua_script(bodies: list[bytes], key: str, path: Path) -> Path:
    quoted = ",\n".join(json.dumps(b.decode()) for b in bodies)
    path.write_text(
        f"""bodies = {{
{quoted}
}}
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "{key}"
request = function()
  counter = counter + 1
  return wrk.format(nil, "/v1/score", nil, bodies[(counter % #bodies) + 1])
end
"""
    )
    return path


def median_run(runs: list[Run]) -> Run:
    """Each figure's median over the runs of one mode (the figures of a row may come from different runs)."""

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    def med_or_none(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return med(present) if present else None

    return Run(
        batching=runs[0].batching,
        requests_per_s=med([r.requests_per_s for r in runs]),
        p50_ms=med([r.p50_ms for r in runs]),
        p90_ms=med([r.p90_ms for r in runs]),
        p99_ms=med([r.p99_ms for r in runs]),
        requests=sum(r.requests for r in runs),
        errors=sum(r.errors for r in runs),
        server_cpu_us_per_request=med([r.server_cpu_us_per_request for r in runs]),
        other_load_cores=med([r.other_load_cores for r in runs]),
        mean_batch_size=med_or_none([r.mean_batch_size for r in runs]),
        feature_ms_per_call=med_or_none([r.feature_ms_per_call for r in runs]),
        inference_ms_per_call=med_or_none([r.inference_ms_per_call for r in runs]),
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(log: Any, limit_s: float = 90.0, cores: float = 0.15) -> float:
    """Wait (at most `limit_s`) until the machine's busy CPU over 3 s stays under `cores`: a freshly started broker
    keeps a core busy for a while, which would slow the first runs only. Returns the last reading."""
    deadline = time.monotonic() + limit_s
    while True:
        before, started = system_busy_s()[0], time.monotonic()
        time.sleep(3.0)
        load = (system_busy_s()[0] - before) / (time.monotonic() - started)
        if load < cores or time.monotonic() > deadline:
            log(f"machine load before measuring: {load:.2f} cores")
            return load
        log(f"waiting for the machine to settle: {load:.2f} cores busy")


def engine_totals(url: str, key: str) -> dict[str, float]:
    """Sums and counts of the API's engine histograms so far: batch size, feature read and inference seconds."""
    request = urllib.request.Request(f"{url}/metrics", headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    pattern = r"^streamscore_api_(batch_size|feature_latency_seconds|inference_latency_seconds)_(sum|count) (\S+)$"
    return {f"{name}_{part}": float(value) for name, part, value in re.findall(pattern, text, re.M)}


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the API at {url} did not become ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--wrk-threads",
        type=int,
        default=1,
        help="wrk's threads, sharing the connections (one handles this load with a fraction of a core, and a second "
        "thread is one more to schedule on the two cores the server uses)",
    )
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--merchants", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", choices=("on", "off"), help="Measure one mode only.")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="Rounds of (off, on), alternated so that a slow spell of the machine hits both; medians are compared.",
    )
    parser.add_argument(
        "--profile", type=Path, help="Record the server with py-spy (collapsed stacks) into this folder."
    )
    args = parser.parse_args(argv)
    console = Console(width=200)
    wrk = shutil.which("wrk")
    if wrk is None:
        console.print("[red]wrk is missing[/]: install it with `apt-get install wrk`")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="streamscore-bench-api-"))
    kafka_port, controller_port, redis_port = free_ports(3)
    stack = LocalStack(
        InfraSettings(
            data_dir=tmp / "stack", kafka_port=kafka_port, controller_port=controller_port, redis_port=redis_port
        )
    )
    runs: list[Run] = []
    try:
        stack.up(on_step=console.log)
        now = datetime.now(UTC)
        records = transactions(
            args.seed, 2000, now - timedelta(seconds=200), 10.0, accounts=args.accounts, merchants=args.merchants
        )
        redis = stack.settings.redis_settings()
        feast_env = {
            "FEAST_PROJECT": f"benchapi_{uuid.uuid4().hex[:6]}",
            "FEAST_REGISTRY_PATH": str(tmp / "feast" / "registry.db"),
            "FEAST_DATA_DIR": str(tmp / "features"),
            "REDIS_HOST": redis.host,
            "REDIS_PORT": str(redis.port),
        }
        populate_features(feast_env, args.seed, args.accounts, args.merchants, now, console.log)
        tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
        model = register_models(tracking_uri, tmp, args.seed, feature_sample(records))
        from scorer.api.security import digest, new_key

        key = new_key()
        script = lua_script([value for _, value, _, _ in records[:500]], key, tmp / "post.lua")
        modes = [m for m in (False, True) if args.only is None or args.only == ("on" if m else "off")]
        wait_quiet(console.log)
        for batching in [m for _ in range(args.rounds) for m in modes]:
            port = free_ports(1)[0]
            env = {
                **os.environ,
                **feast_env,
                "KAFKA_BOOTSTRAP_SERVERS": stack.settings.kafka_settings().bootstrap_servers,
                "REGISTRY_TRACKING_URI": tracking_uri,
                "REGISTRY_MODEL_NAME": MODEL_NAME,
                "REGISTRY_CACHE_DIR": str(tmp / "cache"),
                "API_KEYS": json.dumps([{"name": "bench", "sha256": digest(key)}]),
                "API_PORT": str(port),
                "API_BATCHING": str(batching).lower(),
                "API_AUDIT": "false",
                "API_DEMO_UI": "false",
                "API_RATE_PER_S": "1000000",
                "API_BURST": "1000000",
                "LOG_LEVEL": "WARNING",
            }
            log = (tmp / f"api-{batching}.log").open("wb")
            server = subprocess.Popen(
                [sys.executable, "-c", "from streamscore_cli.main import main; main()", "api"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                url = f"http://127.0.0.1:{port}"
                console.log(f"API batching={batching} starting on {url}")
                wait_ready(url)
                base = [wrk, f"-t{args.wrk_threads}", f"-c{args.connections}", "--latency", "-s", str(script)]
                subprocess.run([*base, f"-d{args.warmup}s", url], capture_output=True, check=True)
                cpu_before = process_cpu_s(server.pid) or 0.0
                busy_before, _ = system_busy_s()
                children_before = _children_cpu_s()
                measure_started = time.monotonic()
                engine_before = engine_totals(url, key)
                spy = None
                if args.profile is not None:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    spy = subprocess.Popen(
                        [
                            shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                            "record",
                            "-p",
                            str(server.pid),
                            "-d",
                            str(args.seconds),
                            "-r",
                            "100",
                            "-f",
                            "raw",
                            "--nonblocking",
                            "-o",
                            str(args.profile / f"api-batching-{batching}.txt"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                console.log(f"measuring {args.seconds} s with {args.connections} connections")
                output = subprocess.run(
                    [*base, f"-d{args.seconds}s", url], capture_output=True, text=True, check=True
                ).stdout
                cpu = (process_cpu_s(server.pid) or 0.0) - cpu_before
                busy = system_busy_s()[0] - busy_before
                elapsed = time.monotonic() - measure_started
                wrk_cpu = _children_cpu_s() - children_before  # wrk has exited; the server has not
                engine = {k: v - engine_before.get(k, 0.0) for k, v in engine_totals(url, key).items()}
                calls = engine.get("batch_size_count", 0.0)
                if spy is not None:
                    spy.wait(60)
                figures = parse_wrk(output)
                requests = max(figures["requests"], 1.0)
                runs.append(
                    Run(
                        batching=batching,
                        requests_per_s=figures["requests_per_s"],
                        p50_ms=figures.get("p50_ms", float("nan")),
                        p90_ms=figures.get("p90_ms", float("nan")),
                        p99_ms=figures.get("p99_ms", float("nan")),
                        requests=int(figures["requests"]),
                        errors=int(figures["errors"]),
                        server_cpu_us_per_request=cpu / requests * 1e6,
                        other_load_cores=max(busy - cpu - wrk_cpu, 0.0) / elapsed,
                        mean_batch_size=engine["batch_size_sum"] / calls if calls else None,
                        feature_ms_per_call=engine["feature_latency_seconds_sum"] / calls * 1e3 if calls else None,
                        inference_ms_per_call=engine["inference_latency_seconds_sum"] / calls * 1e3 if calls else None,
                    )
                )
                console.log(runs[-1])
            finally:
                server.terminate()
                server.wait(30)
                log.close()
        medians = {m: median_run([r for r in runs if r.batching == m]) for m in modes}
        table = Table(title=f"API, {args.connections} concurrent clients (wrk), POST /v1/score — {model.description}")
        columns = (
            "batching",
            "requests/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "server CPU µs/request",
            "batch",
            "features ms/call",
            "inference ms/call",
            "other load",
            "errors",
        )
        for column in columns:
            table.add_column(column, justify="right")
        for label, r in [(f"{'on' if r.batching else 'off'}", r) for r in runs] + [
            (f"[bold]{'on' if m else 'off'}, median[/]", medians[m]) for m in modes
        ]:
            table.add_row(
                label,
                f"{r.requests_per_s:,.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p90_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.server_cpu_us_per_request:,.0f}",
                "" if r.mean_batch_size is None else f"{r.mean_batch_size:.1f}",
                "" if r.feature_ms_per_call is None else f"{r.feature_ms_per_call:.3f}",
                "" if r.inference_ms_per_call is None else f"{r.inference_ms_per_call:.3f}",
                f"{r.other_load_cores:.2f}",
                str(r.errors),
            )
        console.print(table)
        if len(medians) < 2:
            return 0
        off, on = medians[False], medians[True]
        ratio = on.requests_per_s / max(off.requests_per_s, 1e-9)
        console.print(
            f"throughput batching on / off (medians of {args.rounds}): [bold]{ratio:.2f}×[/] (target ≥ 5×); "
            f"p99 {on.p99_ms:.1f} vs {off.p99_ms:.1f} ms"
        )
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"api-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
        document: dict[str, Any] = {
            "machine": machine(),
            "connections": args.connections,
            "seconds": args.seconds,
            "model": model.description,
            "rounds": args.rounds,
            "runs": [asdict(r) for r in runs],
            "medians": {"off": asdict(off), "on": asdict(on)},
            "ratio_on_off": ratio,
        }
        out.write_text(json.dumps(document, indent=2) + "\n")
        console.log(f"wrote {out}")
    finally:
        stack.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
