"""The policy server's throughput and latency with recording on and off (issue 30 item 4).

    python bench/serve_policy.py [--checkpoint models/policy] [--clients 16] [--seconds 10] [--repeats 3]
        [--max-tokens 16]

Two `rlhf serve policy --checkpoint CHECKPOINT` processes run side by side on 127.0.0.1, one
recording into its store and one with --no-record, each over a store that holds the clients' tokens
(`rlhf annotate add-annotator`), both started and warmed up before the first measurement. For each
repeat the two alternate (on, off, on, ...), `--seconds` each, so that load on the machine falls on
both. Each of `--clients` clients (asyncio tasks of this process, one token each) asks for chat
completions of the demo's prompts (max_tokens `--max-tokens`) as fast as it is answered.

One JSON line per setting: requests/s, p50 and p99 (ms) as the median, min and max over the
repeats; the answers by status; for recording on, the exchanges its store holds afterwards and the
ratio of its median requests/s to recording off's; the load average; the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx
import numpy as np

from bench.annotation_load import free_port
from rlhf.annotation.annotators import add_annotator
from rlhf.demo import domain
from rlhf.machine import machine
from rlhf.store import FeedbackStore

PROMPTS = [prompt for prompt, _ in domain.all_prompts()[:64]]


def start_server(checkpoint: Path, store: Path, record: bool, max_tokens: int, log: Path) -> tuple:
    """`rlhf serve policy` as a process, its output to `log` (a pipe nobody reads would fill and stop
    it); returns (process, address) once /health answers."""
    import subprocess

    port = free_port()
    command = [sys.executable, "-m", "rlhf.cli", "serve", "policy", "--checkpoint", str(checkpoint)]
    command += ["--store", str(store), "--port", str(port), "--device", "cpu", "--rate-limit", "0"]
    command += ["--max-tokens", str(max_tokens)] + ([] if record else ["--no-record"])
    server = subprocess.Popen(command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    address, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while True:
        if server.poll() is not None:
            raise SystemExit(f"rlhf serve policy did not start: {log.read_text()[-2000:]}")
        try:
            httpx.get(f"{address}/health", timeout=1)
            return server, address
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise SystemExit("rlhf serve policy did not start in 180 s") from None
            time.sleep(0.2)


async def client_loop(client: httpx.AsyncClient, until: float, max_tokens: int, latencies: list, statuses: Counter):
    index = 0
    while time.monotonic() < until:
        body = {"messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}], "max_tokens": max_tokens}
        index += 1
        started = time.perf_counter()
        try:
            answer = await client.post("/v1/chat/completions", json=body)
        except httpx.TransportError as error:  # counted, not fatal: the line shows how many
            statuses[type(error).__name__] += 1
            continue
        latencies.append(time.perf_counter() - started)
        statuses[answer.status_code] += 1


async def run_clients(address: str, tokens: list[str], seconds: float, max_tokens: int) -> dict:
    """One client per token for `seconds`: requests/s, p50/p99 (ms) and the statuses."""
    latencies, statuses = [], Counter()
    clients = [
        httpx.AsyncClient(base_url=address, timeout=120, headers={"Authorization": f"Bearer {t}"}) for t in tokens
    ]
    started = time.monotonic()
    try:
        await asyncio.gather(*(client_loop(c, started + seconds, max_tokens, latencies, statuses) for c in clients))
    finally:
        elapsed = time.monotonic() - started
        for client in clients:
            await client.aclose()
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "statuses": statuses,
    }


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "policy", help="the policy to serve")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, alternating")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per answer")
    args = parser.parse_args()
    if not args.checkpoint.is_dir():
        raise SystemExit(f"{args.checkpoint}: no policy checkpoint here (run the pipeline, or pass --checkpoint)")
    settings = ("on", "off")
    with tempfile.TemporaryDirectory() as workdir:
        servers, addresses, tokens, stores = [], {}, {}, {}
        try:
            for setting in settings:
                stores[setting] = FeedbackStore(Path(workdir) / f"recording-{setting}.duckdb")
                tokens[setting] = [add_annotator(stores[setting], f"client-{i}") for i in range(args.clients)]
                log = Path(workdir) / f"server-{setting}.log"
                server, addresses[setting] = start_server(
                    args.checkpoint, stores[setting].path, setting == "on", args.max_tokens, log
                )
                servers.append(server)
            for setting in settings:  # warm up: the model's first calls, every token signed in
                asyncio.run(run_clients(addresses[setting], tokens[setting], 2.0, args.max_tokens))
            warm_exchanges = len(stores["on"].query("SELECT exchange_id FROM exchanges"))
            runs = {setting: [] for setting in settings}
            for _ in range(args.repeats):
                for setting in settings:
                    result = asyncio.run(
                        run_clients(addresses[setting], tokens[setting], args.seconds, args.max_tokens)
                    )
                    runs[setting].append(result)
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                server.wait(timeout=60)
        for setting in settings:  # what a server said, where it did not answer every request with 200
            if any(set(r["statuses"]) - {200} for r in runs[setting]):
                tail = (Path(workdir) / f"server-{setting}.log").read_text()[-3000:]
                print(f"recording {setting}: the server's log ends:\n{tail}", file=sys.stderr)
        recorded = len(stores["on"].query("SELECT exchange_id FROM exchanges")) - warm_exchanges
        medians = {s: statistics.median(r["requests_per_s"] for r in runs[s]) for s in settings}
        for setting, results in runs.items():
            statuses = sum((r["statuses"] for r in results), Counter())
            line = {
                "bench": "serve_policy",
                "recording": setting,
                "clients": args.clients,
                "max_tokens": args.max_tokens,
                "repeats": args.repeats,
                "seconds": args.seconds,
                **{k: spread([r[k] for r in results]) for k in ("requests_per_s", "p50_ms", "p99_ms")},
                "statuses": {str(k): v for k, v in sorted(statuses.items())},
            }
            if setting == "on":
                line["exchanges_recorded"] = recorded
                line["requests_per_s_vs_off"] = round(medians["on"] / medians["off"], 3)
            line |= {"load_1m": round(os.getloadavg()[0], 2), "machine": machine()}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
