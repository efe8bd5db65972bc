"""Benchmark ``kiln serve`` against the in-process ceiling and plain FastAPI endpoints, one run.

On the same package and the same real review texts (Rotten Tomatoes, via ``kiln.data``) it
measures, and prints with the ratios issues 5 and 14 name:

- the ceiling: the package's predictor called in-process, best of a small grid of batch sizes,
  intra-op threads and parallel sessions; and the raw single-text latency (batch 1);
- four servers, each in its own uvicorn process (``--servers`` picks): Kiln with its defaults
  (``num_threads: auto``), Kiln with one intra-op thread per call (``kiln-1t``), and a plain
  FastAPI endpoint doing one inference per request with all cores per call (``plain-2t`` on 2
  cores) and with one thread per call (``plain-1t``); closed loop at concurrency 1, 16 and 64
  (with the share of Kiln's batches that ran alone on all cores) and an open-loop (Poisson)
  rate sweep: throughput, p50, p99; then Kiln against each at c=1 (p50) and at the top
  concurrency (req/s), with ratios;
- overload: Kiln at 10x its sustainable rate (stays up, sheds with 503, accepted p99 bounded)
  and then at light load again (recovers);
- with ``--soak-s N``: the server's resident memory over N seconds of steady load.
- with ``--monitoring``: throughput with the prediction log and drift on vs off (goal >= 0.97).

    python bench/serve.py --package PATH            # an int8 ONNX MiniLM package, say
    python bench/serve.py --monitoring --package PATH --duration-s 30 --rounds 2
    python bench/serve.py                           # an untrained BERT package built here
    python bench/serve.py --package PATH --concurrency 1 64 --rates --overload-s 0  # light load only
    python bench/serve.py --size tiny --duration-s 1 --ceiling-s 0.5 --concurrency 1 4 \
        --rates 0.5 1 --batch-sizes 1 8 --threads 1 2 --sessions 1 --overload-s 1 --soak-s 2  # smoke

The closed-loop rows are driven by wrk when it is installed (``apt-get install wrk``; one C thread,
so the load generator takes little of the CPUs it shares with the servers) and otherwise by an
httpx client, with a note saying so (``--client httpx`` chooses it; ``--client wrk`` stops with
how to install wrk when it is missing); the open-loop sweep and the overload run use httpx.
Compare rows of one run, not numbers across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

WORDS = (
    "the film was a delight from start to finish dull lifeless script with nothing to say "
    "wonderful acting moving story boring predictable far too long one of best movies year "
    "i want those two hours my life back plot twist soundtrack director cast scenes ending"
).split()


def build_package(dest: Path, size: str) -> Path:
    """An untrained BERT text classifier written by Kiln's own package writer."""
    import torch

    from kiln.data.tokenizer import train_wordpiece
    from kiln.runtime.architectures import bert_config, build_text_classifier
    from kiln.runtime.weights import write_torch_package

    torch.manual_seed(0)
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=20)) for _ in range(500)]
    tok = train_wordpiece(corpus, vocab_size=400, dest=dest.parent / "bench-tok.json")
    cfg = bert_config(size=size, vocab_size=400, num_labels=2, max_length=64, dropout=0.0)
    write_torch_package(
        dest,
        model=build_text_classifier(cfg),
        architecture={"family": "hf"},
        manifest={
            "name": "bench",
            "task": "text-classification",
            "labels": ["neg", "pos"],
            "input_schema": {"kind": "text"},
            "preprocessing": {"kind": "text", "tokenizer_file": "tokenizer.json", "max_length": 64},
            "precision": "fp32",
            "lineage": {"parent": None, "transformation": "bench", "settings": {}},
            "metrics": {},
            "data_fingerprint": "sha256:" + "0" * 64,
            "recipe": {},
        },
        extra_files={"tokenizer.json": tok},
    )
    return dest


def review_texts(count: int, max_words: int) -> list[str]:
    """Real review snippets from the Rotten Tomatoes corpus, cut to ``max_words`` words."""
    from kiln.data.sources import load_builtin

    texts = [t for t in load_builtin("rotten_tomatoes").inputs if isinstance(t, str) and t.strip()]
    random.Random(0).shuffle(texts)
    return [" ".join(t.split()[:max_words]) for t in texts[:count]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def summarize(latencies: list[float], elapsed_s: float, **extra: Any) -> dict[str, Any]:
    lat = np.array(latencies) * 1000.0
    return {
        "rps": len(latencies) / max(elapsed_s, 1e-9),
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        **extra,
    }


# ---- the ceiling: the predictor in-process -------------------------------------------------


def measure_in_process(
    package: Path, texts: list[str], *, batch_size: int, threads: int, sessions: int, duration_s: float
) -> dict[str, Any]:
    """``sessions`` predictors, each in its own thread, each predicting batches back to back."""
    import kiln.runtime

    predictors = [kiln.runtime.load(package, num_threads=threads) for _ in range(sessions)]
    for p in predictors:
        p.predict(texts[:batch_size])  # warm-up
    counts = [0] * sessions
    batch_latencies: list[float] = []
    end = time.perf_counter() + duration_s

    def work(k: int) -> None:
        rng = random.Random(k)
        while time.perf_counter() < end:
            batch = rng.sample(texts, batch_size)
            start = time.perf_counter()
            predictors[k].predict(batch)
            batch_latencies.append(time.perf_counter() - start)
            counts[k] += batch_size

    began = time.perf_counter()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(sessions)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    row = summarize(batch_latencies, elapsed)
    row["rps"] = sum(counts) / elapsed  # texts per second
    return row


def search_ceiling(package: Path, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    best: dict[str, Any] = {"rps": 0.0}
    print("ceiling search (texts/s in-process):")
    for batch_size, threads, sessions in itertools.product(args.batch_sizes, args.threads, args.sessions):
        if threads * sessions > max(args.threads):
            continue  # oversubscription only loses here
        row = measure_in_process(
            package, texts, batch_size=batch_size, threads=threads, sessions=sessions, duration_s=args.ceiling_s
        )
        print(f"  batch {batch_size:>3} threads {threads} sessions {sessions}: {row['rps']:8.1f}")
        if row["rps"] > best["rps"]:
            best = {**row, "batch_size": batch_size, "threads": threads, "sessions": sessions}
    return best


# ---- the plain FastAPI endpoint ------------------------------------------------------------


def plain_app(package: Path, threads: int) -> Any:
    """One request, one inference: what a hand-written FastAPI endpoint does."""
    from fastapi import FastAPI

    import kiln.runtime

    predictor = kiln.runtime.load(package, num_threads=threads)
    app = FastAPI()

    @app.post("/v1/models/{name}:predict")
    def predict(name: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"outputs": predictor.predict(body["inputs"])}

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def serve_plain(package: Path, port: int, threads: int) -> None:
    import uvicorn

    uvicorn.run(plain_app(package, threads), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- servers and load ----------------------------------------------------------------------


def start(argv: list[str], base: str) -> subprocess.Popen[bytes]:
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/v2/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"server exited before it was ready: {argv}")
        time.sleep(0.2)
    stop(server)
    raise SystemExit(f"server not ready after 120 s: {argv}")


def stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


async def closed_loop(url: str, texts: list[str], concurrency: int, duration_s: float) -> dict[str, Any]:
    """``concurrency`` clients each send one text, wait for the answer, repeat."""
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            while time.perf_counter() < end:
                begin = time.perf_counter()
                resp = await client.post(url, json={"inputs": [rng.choice(texts)]})
                if resp.status_code == 200:
                    latencies.append(time.perf_counter() - begin)
                else:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    return summarize(latencies, elapsed, errors=errors)


WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("KILN_BENCH_BODIES")) do bodies[#bodies + 1] = line end
local i = math.random(#bodies)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def run_closed(client: str, url: str, texts: list[str], concurrency: int, duration_s: float, work: Path) -> dict:
    """One closed-loop measurement with the chosen load generator."""
    if client == "wrk":
        return wrk_closed_loop(url, texts, concurrency, duration_s, work)
    return asyncio.run(closed_loop(url, texts, concurrency, duration_s))


def wrk_closed_loop(url: str, texts: list[str], concurrency: int, duration_s: float, work: Path) -> dict[str, Any]:
    """The closed loop driven by wrk (C, one thread): the load generator takes less CPU than httpx."""
    import json

    bodies = work / "wrk-bodies.jsonl"
    if not bodies.exists():
        bodies.write_text("".join(json.dumps({"inputs": [t]}) + "\n" for t in texts))
        (work / "wrk.lua").write_text(WRK_SCRIPT)
    command = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s", "--latency", "--timeout", "60s",
        "-s", str(work / "wrk.lua"), url,
    ]  # fmt: skip
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, env=dict(os.environ, KILN_BENCH_BODIES=str(bodies))
    ).stdout
    pattern = re.compile(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
    percentiles = {int(m[1]): float(m[2]) * _UNITS_MS[m[3]] for m in pattern.finditer(out)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad[1]) if bad else 0) + (sum(int(x) for x in socket_errors.groups()) if socket_errors else 0)
    return {"rps": rps, "p50_ms": percentiles[50], "p99_ms": percentiles[99], "errors": errors}


class LightClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, for the open loop.

    httpx costs a few hundred microseconds of CPU per request; on 2 shared cores a generator that
    expensive caps the rate it can offer and starves the servers it measures. This one writes a
    pre-encoded request and reads the status line and a Content-Length body, nothing more.
    """

    def __init__(self, url: str, max_connections: int = 1024) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.head = f"POST {parsed.path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(max_connections)

    async def post(self, body: bytes) -> int:
        async with self.slots:
            reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(f"{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                await reader.readexactly(int(length[1]) if length else 0)
            except BaseException:
                writer.close()
                raise
            if re.search(rb"(?i)\r\nconnection: *close", head):
                writer.close()
            else:
                self.idle.append((reader, writer))
            return int(head[9:12])

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def open_loop(url: str, texts: list[str], rate: float, duration_s: float) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` req/s whatever the answers; counts 503s and other failures."""
    import json

    latencies: list[float] = []
    shed = failed = 0
    rng = random.Random(7)
    bodies = [json.dumps({"inputs": [t]}).encode() for t in texts]
    client = LightClient(url)

    async def one(body: bytes) -> None:
        nonlocal shed, failed
        begin = time.perf_counter()
        try:
            status = await asyncio.wait_for(client.post(body), timeout=30)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            failed += 1
            return
        if status == 200:
            latencies.append(time.perf_counter() - begin)
        elif status in (429, 503):
            shed += 1
        else:
            failed += 1

    tasks = []
    began = time.perf_counter()
    next_at = began
    while next_at < began + duration_s:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        tasks.append(asyncio.create_task(one(rng.choice(bodies))))
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    client.close()
    return summarize(latencies, elapsed, offered=rate, shed=shed, failed=failed)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def soak(server: subprocess.Popen[bytes], url: str, texts: list[str], seconds: float) -> list[float]:
    """Resident memory of the server, sampled every ~``seconds/10`` under steady c=16 load."""
    samples = [rss_mib(server.pid)]
    step = max(seconds / 10.0, 1.0)
    spent = 0.0
    while spent < seconds:
        asyncio.run(closed_loop(url, texts, 16, step))
        spent += step
        samples.append(rss_mib(server.pid))
    return samples


# ---- the run -------------------------------------------------------------------------------


WRK_MISSING = "wrk is not installed (Debian/Ubuntu: `apt-get install wrk`; elsewhere build it from github.com/wg/wrk)"


def closed_loop_client(requested: str | None, parser: argparse.ArgumentParser) -> str:
    """wrk when installed and not declined; httpx otherwise, saying why. ``--client wrk`` without
    wrk stops (exit status 2) with how to get it."""
    if shutil.which("wrk"):
        return requested or "wrk"
    if requested == "wrk":
        parser.error(f"--client wrk: {WRK_MISSING}; or run the closed loop on --client httpx")
    if requested is None:
        print(
            f"note: {WRK_MISSING}: the closed loop runs on the httpx client, which takes more of the CPUs "
            "it shares with the servers: compare its rows with other httpx rows only",
            file=sys.stderr,
        )
    return "httpx"


def row(label: str, r: dict[str, Any], extra: str = "") -> None:
    print(f"  {label:<24} {r['rps']:>9.1f} {r['p50_ms']:>9.1f} {r['p99_ms']:>9.1f}  {extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--package", type=Path, help="text package folder (default: build one)")
    parser.add_argument("--size", default="mini", help="BERT size of the package built without --package")
    parser.add_argument("--duration-s", type=float, default=10.0, help="seconds per load measurement")
    parser.add_argument("--ceiling-s", type=float, default=3.0, help="seconds per ceiling grid point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--rates",
        type=float,
        nargs="*",
        default=[0.25, 0.5, 0.75, 1.0, 1.25],
        help="open-loop rates as fractions of Kiln's c=64 throughput (none: skip the open loop)",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-words", type=int, default=48, help="review texts cut to this many words")
    parser.add_argument(
        "--servers", nargs="+", choices=SERVERS, default=list(SERVERS),
        help="servers to compare (kiln always runs): see start_servers",
    )  # fmt: skip
    parser.add_argument(
        "--overload-s", type=float, default=10.0, help="seconds at 10x the sustainable rate (0: skip)"
    )
    parser.add_argument("--soak-s", type=float, default=0.0, help="memory soak seconds (0: skip)")
    parser.add_argument("--plain-server", type=int, help=argparse.SUPPRESS)  # internal: serve plain on PORT
    parser.add_argument("--max-batch-size", type=int, default=32, help="batcher size (--monitoring)")
    parser.add_argument(
        "--client", choices=["httpx", "wrk"],
        help="closed-loop load generator (default: wrk when installed, it takes less of the shared CPUs; else httpx)",
    )  # fmt: skip
    parser.add_argument("--monitoring", action="store_true", help="measure monitoring on vs off instead")
    parser.add_argument("--rounds", type=int, default=2, help="off/on alternations (--monitoring)")
    args = parser.parse_args()
    args.servers = ["kiln", *(s for s in args.servers if s != "kiln")]
    if args.plain_server:
        serve_plain(args.package, args.plain_server, max(args.threads))
        return
    args.client = closed_loop_client(args.client, parser)

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-serve-"))
    if args.monitoring:
        try:
            bench_monitoring(args.package or build_package(work / "bench", args.size), work, args)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    servers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        package = args.package or build_package(work / "bench", args.size)
        texts = review_texts(2000, args.max_words)
        print(f"package {package}  {len(texts)} review texts  cores {os.cpu_count()}  {args.duration_s:.0f}s per row")

        ceiling = search_ceiling(package, texts, args)
        single = measure_in_process(
            package, texts, batch_size=1, threads=ceiling["threads"], sessions=1, duration_s=args.ceiling_s
        )
        print(
            f"ceiling {ceiling['rps']:.1f} texts/s (batch {ceiling['batch_size']}, threads {ceiling['threads']}, "
            f"sessions {ceiling['sessions']}); raw single-text latency p50 {single['p50_ms']:.2f} ms"
        )

        urls = start_servers(package, work, args, servers)
        plain_wide = f"plain-{max(args.threads)}t"

        print(f"\nclosed loop ({args.client}){'':<7} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
        closed: dict[tuple[str, int], dict[str, Any]] = {}
        for concurrency in args.concurrency:
            for name, url in urls.items():
                before = batches_by_threads(url) if name.startswith("kiln") else {}
                closed[name, concurrency] = r = run_closed(args.client, url, texts, concurrency, args.duration_s, work)
                extra = f"errors {r['errors']}"
                if name == "kiln":
                    extra += f"  {wide_share(before, batches_by_threads(url))}"
                row(f"{name} c={concurrency}", r, extra)

        top_c = max(args.concurrency)
        sustainable = closed["kiln", top_c]["rps"]
        if args.rates:
            print(f"\nopen loop (rates x {sustainable:.0f} req/s)  {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
        for fraction in args.rates:
            for name, url in urls.items():
                r = asyncio.run(open_loop(url, texts, sustainable * fraction, args.duration_s))
                row(f"{name} {sustainable * fraction:.0f}/s", r, f"shed {r['shed']} failed {r['failed']}")

        before = closed["kiln", min(args.concurrency)]
        if args.overload_s > 0:
            print("\noverload (Kiln at 10x the sustainable rate, then at c=1)")
            over = asyncio.run(open_loop(urls["kiln"], texts, sustainable * 10, args.overload_s))
            row(f"kiln {sustainable * 10:.0f}/s", over, f"shed {over['shed']} failed {over['failed']}")
            is_up = servers["kiln"].poll() is None
            after = run_closed(args.client, urls["kiln"], texts, 1, args.duration_s, work)
            row("kiln c=1 after", after, f"errors {after['errors']}")
            print(
                f"  stays up: {is_up}; sheds with 503: {over['shed'] > 0}; accepted p99 {over['p99_ms']:.0f} ms; "
                f"recovers: p50 {after['p50_ms']:.2f} ms vs {before['p50_ms']:.2f} ms before"
            )

        if args.soak_s > 0:
            samples = soak(servers["kiln"], urls["kiln"], texts, args.soak_s)
            print(
                f"\nsoak {args.soak_s:.0f}s at c=16: RSS MiB "
                + " ".join(f"{s:.0f}" for s in samples)
                + f"  (growth {samples[-1] - samples[1]:+.1f} MiB after warm-up)"
            )

        print("\ngoals")
        if plain_wide in urls:
            k, p = closed["kiln", top_c], closed[plain_wide, top_c]
            print(f"  c={top_c}: Kiln / {plain_wide} throughput {k['rps'] / max(p['rps'], 1e-9):.2f}x (goal >= 1.3)")
            print(f"  c={top_c}: Kiln p99 / {plain_wide} p99 {k['p99_ms'] / p['p99_ms']:.2f} (goal <= 0.5)")
        print(f"  c={top_c}: Kiln / ceiling {closed['kiln', top_c]['rps'] / ceiling['rps']:.2f} (goal >= 0.9)")
        print(
            f"  c={min(args.concurrency)}: Kiln p50 - raw single-text latency "
            f"{before['p50_ms'] - single['p50_ms']:+.2f} ms (goal <= +1 ms)"
        )
        print_light_load(closed, urls, min(args.concurrency), top_c, plain_wide)
    finally:
        for server in servers.values():
            stop(server)
        shutil.rmtree(work, ignore_errors=True)


SERVERS = ("kiln", "kiln-1t", "plain-wide", "plain-1t")


def start_servers(
    package: Path, work: Path, args: argparse.Namespace, servers: dict[str, subprocess.Popen[bytes]]
) -> dict[str, str]:
    """Start the chosen servers (``--servers``) into ``servers``; their predict URLs by label.

    ``kiln``: ``kiln serve`` with its defaults (``num_threads: auto``); ``kiln-1t``: one intra-op
    thread per call whatever the load (``num_threads: 1``, the default before auto);
    ``plain-wide`` (labelled ``plain-Nt``): the plain endpoint with N = max(--threads) intra-op
    threads per call (all cores: what most people write); ``plain-1t``: the plain endpoint with
    one thread per call (the tuned one).
    """
    urls: dict[str, str] = {}
    for choice in args.servers:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        if choice.startswith("kiln"):
            settings: dict[str, Any] = {"models": [{"name": "bench", "versions": {1: str(package)}}]}
            if choice == "kiln-1t":
                settings["num_threads"] = 1
            path = work / f"serve-{len(urls)}.yaml"
            path.write_text(yaml.safe_dump(settings))
            argv = [sys.executable, "-m", "kiln.cli.main", "serve", "--config", str(path), "--port", str(port)]
            label = choice
        else:
            threads = max(args.threads) if choice == "plain-wide" else 1
            argv = [
                sys.executable, str(Path(__file__).resolve()), "--package", str(package),
                "--threads", str(threads), "--plain-server", str(port),
            ]  # fmt: skip
            label = f"plain-{threads}t"
        if label in urls:
            continue  # plain-wide is plain-1t when --threads is 1
        servers[label] = start(argv, base)
        urls[label] = base + "/v1/models/bench:predict"
    return urls


def batches_by_threads(url: str) -> dict[str, float]:
    """Kiln's model calls so far by the intra-op threads they were given (its /metrics)."""
    base = url.split("/v1/")[0]
    text = httpx.get(base + "/metrics", timeout=10).text
    pattern = re.compile(r'^kiln_batches_total\{[^}]*threads="(\d+)"[^}]*\} ([\d.e+]+)$', re.M)
    return {m[1]: float(m[2]) for m in pattern.finditer(text)}


def wide_share(before: dict[str, float], after: dict[str, float]) -> str:
    """Which share of a row's model calls ran on more than one thread (a batch alone)."""
    calls = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    total = sum(calls.values())
    wide = sum(v for k, v in calls.items() if int(k) > 1)
    return f"batches alone (all cores) {wide / total:.0%} of {total:.0f}" if total else ""


def print_light_load(
    closed: dict[tuple[str, int], dict[str, Any]], urls: dict[str, str], low_c: int, top_c: int, plain_wide: str
) -> None:
    """Kiln against each baseline at light load (p50) and at saturation (req/s), with ratios."""
    print("\nlight load and saturation: Kiln against each baseline (ratios Kiln / baseline)")
    k1, kt = closed["kiln", low_c], closed["kiln", top_c]
    cells = [f"kiln {k1['p50_ms']:.2f} ms"]
    for name in urls:
        if name != "kiln":
            ratio = k1["p50_ms"] / closed[name, low_c]["p50_ms"]
            goal = " (goal <= 1.10)" if name == plain_wide else ""
            cells.append(f"{name} {closed[name, low_c]['p50_ms']:.2f} ms: {ratio:.2f}{goal}")
    print(f"  c={low_c} p50:    " + " | ".join(cells))
    cells = [f"kiln {kt['rps']:.1f}"]
    for name in urls:
        if name != "kiln":
            ratio = kt["rps"] / max(closed[name, top_c]["rps"], 1e-9)
            goal = " (goal >= 0.95: keeps its throughput)" if name == "kiln-1t" else ""
            cells.append(f"{name} {closed[name, top_c]['rps']:.1f}: {ratio:.2f}x{goal}")
    print(f"  c={top_c} req/s: " + " | ".join(cells))


def bench_monitoring(model: Path, work: Path, args: argparse.Namespace) -> None:
    """Throughput with the prediction log and drift on vs off: two servers, same package, one run.

    Monitoring is a server-wide setting, so one server runs with it off and one with it on
    (100% sampling, drift with the embedding projection against a reference profile written
    into a copy of the package, the default settings: drift every 30 s over the last 500 rows,
    100 of them re-encoded). Rows of at least 30 s hold a drift pass each. The rows alternate
    off/on ``--rounds`` times to spread the noise of a shared machine.
    """
    from kiln.runtime.profile import write_reference_profile

    rng = random.Random(1)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(4, 48))) for _ in range(256)]
    package = work / "bench-profiled"
    shutil.copytree(model, package)
    write_reference_profile(package, texts[:200])
    monitor = {"enabled": True, "log_dir": str(work / "monitor")}
    batching = {"max_batch_size": args.max_batch_size}
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for label, extra in (("off", {}), ("on", {"monitor": monitor})):
            config = {"models": [{"name": "bench", "versions": {1: str(package)}, "batching": batching}]}
            servers[label] = _start_server({**config, **extra}, work / f"serve-{label}.yaml")
        for proc, base in servers.values():
            _wait_ready(proc, base)
        print(f"model {model}  duration {args.duration_s:.0f}s per row  cores {os.cpu_count()}")
        print(f"{'concurrency':>11} {'monitor':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for concurrency in args.concurrency:
            rps: dict[str, list[float]] = {"off": [], "on": []}
            for _ in range(args.rounds):
                for label in ("off", "on"):
                    url = f"{servers[label][1]}/v1/models/bench:predict"
                    r = run_closed(args.client, url, texts, concurrency, args.duration_s, work)
                    rps[label].append(r["rps"])
                    print(
                        f"{concurrency:>11} {label:>8} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} "
                        f"{r['p99_ms']:>8.1f} {r['errors']:>6}"
                    )
            ratio = sum(rps["on"]) / max(sum(rps["off"]), 1e-9)
            print(f"{concurrency:>11} {'on/off':>8} {ratio:>8.3f}x throughput (goal >= 0.97)")
        reports = httpx.get(servers["on"][1] + "/v1/monitor/reports", timeout=10).json()
        drift = sum(len(r["columns"]) for r in reports)
        print(f"monitoring: {sum(r['rows'] for r in reports)} rows in the window, {drift} drift statistics")
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _start_server(config: dict, path: Path) -> tuple[subprocess.Popen[bytes], str]:
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = [sys.executable, "-m", "kiln.cli.main", "serve", "--config", str(path), "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit("server exited before it was ready")
        time.sleep(0.2)
    raise SystemExit("server not ready after 120 s")


if __name__ == "__main__":
    main()
