"""uvicorn's own cost per request, and what coalescing a response's writes saves (`scorer.api.server`).

`python -m bench.http_floor [--seconds 8] [--rounds 2]`: a bare ASGI app (reads the body, answers a fixed
300-byte JSON) under uvicorn with httptools, once with uvicorn's protocol and once with
`CoalescingHttpToolsProtocol`, alternated for `--rounds` rounds, each driven by `wrk` (one thread, 64
connections, POST of a transaction-sized body). Reports requests/s and the server's CPU µs per request: the floor
under which no work of ours can bring the API. Needs `apt-get install wrk`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._probe import process_cpu_s
from bench.api import parse_wrk
from bench.pipeline import free_ports

RESPONSE = b'{"event_id":"evt-1","score":0.1234,"decision":"approve","model_version":"1","variant":"champion"}' * 3
BODY = (
    '{"schema_version":1,"event_id":"evt-7-1","account_id":"acc-000788","merchant_id":"mer-00007",'
    '"merchant_category":"5541","amount":32.4,"currency":"EUR","country":"NL","channel":"pos",'
    '"device_id":null,"event_time":"2026-11-24T18:36:45.988551Z"}'
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(RESPONSE)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": RESPONSE})


def serve(port: int, coalescing: bool) -> None:
    import uvicorn

    from scorer.api.server import _protocol

    protocol: Any = _protocol() if coalescing else "httptools"
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http=protocol)


def _wait(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, data=b"{}", timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no server at {url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=("plain", "coalescing"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.port, args.serve == "coalescing")
        return 0
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is missing: install it with `apt-get install wrk`")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(  # a Lua long string holds the JSON as it is
            f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{BODY}]]\n'
        )
        results: dict[str, list[tuple[float, float]]] = {"plain": [], "coalescing": []}
        for _ in range(args.rounds):
            for mode in results:
                port = free_ports(1)[0]
                server = subprocess.Popen(
                    [sys.executable, "-m", "bench.http_floor", "--serve", mode, "--port", str(port)]
                )
                try:
                    url = f"http://127.0.0.1:{port}/"
                    _wait(url)
                    base = [wrk, "-t1", "-c64", "-s", str(script)]
                    subprocess.run([*base, "-d2s", url], capture_output=True, check=True)
                    before = process_cpu_s(server.pid) or 0.0
                    out = subprocess.run(
                        [*base, f"-d{args.seconds}s", url], capture_output=True, text=True, check=True
                    ).stdout
                    cpu = (process_cpu_s(server.pid) or 0.0) - before
                finally:
                    server.terminate()
                    server.wait(10)
                figures = parse_wrk(out)
                total, rps = max(figures["requests"], 1.0), figures["requests_per_s"]
                results[mode].append((rps, cpu / total * 1e6))
                print(f"{mode:>10}: {rps:10,.0f} requests/s, {cpu / total * 1e6:5.1f} µs CPU/request", flush=True)
    plain = statistics.median(r for r, _ in results["plain"])
    coalescing = statistics.median(r for r, _ in results["coalescing"])
    print(f"medians: plain {plain:,.0f}, coalescing {coalescing:,.0f} requests/s ({coalescing / plain:.2f}×)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
