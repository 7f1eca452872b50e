"""Both servers under 1, 8 and 64 concurrent clients: this tree's code against an earlier revision's.

    git worktree add /tmp/before 1c54efa^       # the code before issue 28's hardening
    python bench/server_load.py --before /tmp/before [--model models/reward] [--seconds 5] [--repeats 3]
        [--clients 1 8 64] [--servers reward page]

Each side's servers run from its own tree (`python -m rlhf.cli` with that tree first on the path,
the same virtual environment) on 127.0.0.1, with their default flags, all four started before the
first measurement and kept up: `rlhf serve reward --model MODEL` (clients POST 8 queries to
/get_reward, as a trainer sends a micro-batch) and `rlhf annotate serve` over a store of queued
items (each client is an annotator with its own token: GET /api/next, then POST /api/submit; a
429 or 503 is waited out as Retry-After says, as the page's script does). For each server and
client count the sides alternate (before, after, before, ...) for `--repeats` runs of `--seconds`
each, so that load on the machine falls on both. Clients are asyncio tasks of one process.

One JSON line per server, client count and side: requests/s, p50 and p99 (ms) as the median, min
and max over the repeats; the answers by status, summed; the load average; the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx
import numpy as np

from bench.annotation_load import free_port, queued_store, start
from rlhf.machine import machine

CLIENTS = (1, 8, 64)
QUERIES_PER_REQUEST = 8
QUERY = "Human: tell me about owls . answer :\n\nAssistant: owls hunt at night and sleep by day , thanks"


async def reward_client(client: httpx.AsyncClient, until: float, latencies: list, statuses: Counter) -> None:
    body = {"query": [QUERY] * QUERIES_PER_REQUEST}
    while time.monotonic() < until:
        await timed(client, "POST", "/get_reward", latencies, statuses, json=body)


async def page_client(client: httpx.AsyncClient, until: float, latencies: list, statuses: Counter) -> None:
    while time.monotonic() < until:
        answer = await timed(client, "GET", "/api/next", latencies, statuses)
        item = answer.json().get("item") if answer.status_code == 200 else None
        if item is None:
            continue
        order = [r["response_id"] for r in item["responses"]]
        body = {"item_id": item["item_id"], "order": order, "tied_with_above": [False] * len(order)}
        await timed(client, "POST", "/api/submit", latencies, statuses, json=body)


async def timed(client, method, path, latencies, statuses, **kwargs) -> httpx.Response:
    started = time.perf_counter()
    answer = await client.request(method, path, **kwargs)
    latencies.append(time.perf_counter() - started)
    statuses[answer.status_code] += 1
    if answer.status_code in (429, 503):
        await asyncio.sleep(min(10.0, float(answer.headers.get("retry-after", "2"))))
    return answer


async def run_clients(address: str, server: str, tokens: list[str], seconds: float) -> dict:
    """`len(tokens)` clients for `seconds`: requests/s, p50/p99 (ms) and the statuses."""
    latencies, statuses = [], Counter()
    client_loop = reward_client if server == "reward" else page_client
    clients = [
        httpx.AsyncClient(base_url=address, timeout=120, headers={"Authorization": f"Bearer {t}"} if t else {})
        for t in tokens
    ]
    started = time.monotonic()
    await asyncio.gather(*(client_loop(c, started + seconds, latencies, statuses) for c in clients))
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
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1)}


def revision(tree: Path) -> str:
    answer = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    return answer.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a worktree of the earlier revision")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "reward", help="the reward model directory")
    parser.add_argument("--seconds", type=float, default=5.0, help="each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating")
    parser.add_argument("--items", type=int, default=20000, help="queued items of the page's stores")
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS), help="concurrent clients")
    parser.add_argument("--servers", nargs="+", default=["reward", "page"], choices=["reward", "page"])
    args = parser.parse_args()
    sides = {"before": args.before.resolve(), "after": ROOT}
    tokens = [f"load-token-{i:03d}-0123456789" for i in range(max(args.clients))]
    servers, addresses = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        try:
            for side, tree in sides.items():
                if "reward" in args.servers:
                    port = free_port()
                    command = ["serve", "reward", "--model", str(args.model.resolve()), "--device", "cpu"]
                    servers.append(start(tree, command, port))
                    addresses["reward", side] = f"http://127.0.0.1:{port}"
                if "page" not in args.servers:
                    continue
                store = queued_store(Path(workdir) / f"{side}.duckdb", args.items)
                tokens_file = Path(workdir) / f"{side}-annotators.json"
                tokens_file.write_text(json.dumps({t: f"annotator-{i}" for i, t in enumerate(tokens)}))
                port = free_port()
                command = [
                    "annotate",
                    "--store",
                    str(store.path),
                    "serve",
                    "--tokens",
                    str(tokens_file),
                    "--params",
                    "/nonexistent-params.yaml",
                ]
                servers.append(start(tree, command, port))
                addresses["page", side] = f"http://127.0.0.1:{port}"
            for (server, _side), address in addresses.items():  # warm up: models loaded, pages signed in
                asyncio.run(run_clients(address, server, tokens if server == "page" else [""] * 8, 1.0))
            for server in args.servers:
                for clients in args.clients:
                    runs = {side: [] for side in sides}
                    for _ in range(args.repeats):
                        for side in sides:
                            who = tokens[:clients] if server == "page" else [""] * clients
                            result = asyncio.run(run_clients(addresses[server, side], server, who, args.seconds))
                            runs[side].append(result)
                    for side, results in runs.items():
                        statuses = sum((r["statuses"] for r in results), Counter())
                        print(
                            json.dumps(
                                {
                                    "bench": "server_load",
                                    "server": server,
                                    "clients": clients,
                                    "side": side,
                                    "revision": revision(sides[side]),
                                    "repeats": args.repeats,
                                    "seconds": args.seconds,
                                    **{
                                        k: spread([r[k] for r in results])
                                        for k in ("requests_per_s", "p50_ms", "p99_ms")
                                    },
                                    "statuses": {str(k): v for k, v in sorted(statuses.items())},
                                    "load_1m": round(os.getloadavg()[0], 2),
                                    "machine": machine(),
                                }
                            ),
                            flush=True,
                        )
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                server.wait(timeout=60)


if __name__ == "__main__":
    main()
