"""Benchmark ``kiln serve``: throughput and latency with dynamic batching on vs off, one run.

Starts one server holding the same package twice, as ``bench`` (batching on, the default) and
``bench_off`` (batching off: one model call per request), then drives each with a closed-loop
load generator at each concurrency and prints req/s, p50 and p99 and the on/off ratio.

    python bench/serve.py                       # an untrained BERT-mini package built here
    python bench/serve.py --model PATH --duration-s 20 --concurrency 1 16 64
    python bench/serve.py --monitoring          # prediction log + drift on vs off (goal >= 0.97)

The load generator shares the machine's cores with the server, as a wrk run on the same host
would; compare the two rows of one run, not numbers across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def drive(
    url: str, texts: list[str], concurrency: int, duration_s: float
) -> dict[str, float]:
    """Closed loop: ``concurrency`` clients each send one text, wait, repeat."""
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            while time.perf_counter() < end:
                start = time.perf_counter()
                resp = await client.post(url, json={"inputs": [rng.choice(texts)]})
                if resp.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    lat = np.array(latencies) * 1000.0
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="text package folder (default: build one)")
    parser.add_argument("--size", default="mini", help="BERT size of the built package")
    parser.add_argument("--duration-s", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--monitoring", action="store_true", help="measure monitoring on vs off instead of batching")
    parser.add_argument("--rounds", type=int, default=2, help="off/on alternations (--monitoring)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-serve-"))
    model = args.model or build_package(work / "bench", args.size)
    if args.monitoring:
        try:
            bench_monitoring(model, work, args)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    batching_on = {"max_batch_size": args.max_batch_size}
    config = {
        "models": [
            {"name": "bench", "versions": {1: str(model)}, "batching": batching_on},
            {"name": "bench_off", "versions": {1: str(model)}, "batching": {"enabled": False}},
        ],
        "max_request_inputs": 1024,
    }
    (work / "serve.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kiln.cli.main",
            "serve",
            "--config",
            str(work / "serve.yaml"),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise SystemExit("server exited before it was ready")
            time.sleep(0.2)
        rng = random.Random(1)
        texts = [" ".join(rng.choices(WORDS, k=rng.randint(4, 48))) for _ in range(256)]
        print(f"model {model}  duration {args.duration_s:.0f}s per row  cores {os.cpu_count()}")
        header = ("concurrency", "batching", "req/s", "p50 ms", "p99 ms", "errors")
        print(" ".join(f"{h:>{w}}" for h, w in zip(header, (11, 8, 8, 8, 8, 6), strict=True)))
        for concurrency in args.concurrency:
            rows = {}
            for name, label in (("bench_off", "off"), ("bench", "on")):
                url = f"{base}/v1/models/{name}:predict"
                rows[label] = asyncio.run(drive(url, texts, concurrency, args.duration_s))
                r = rows[label]
                print(
                    f"{concurrency:>11} {label:>8} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} "
                    f"{r['p99_ms']:>8.1f} {r['errors']:>6}"
                )
            ratio = rows["on"]["rps"] / max(rows["off"]["rps"], 1e-9)
            print(f"{concurrency:>11} {'on/off':>8} {ratio:>8.2f}x throughput")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


def bench_monitoring(model: Path, work: Path, args: argparse.Namespace) -> None:
    """Throughput with the prediction log and drift on vs off: two servers, same package, one run.

    Monitoring is a server-wide setting, so one server runs with it off and one with it on
    (100% sampling, drift with the embedding projection against a reference profile written
    into a copy of the package, the default settings: drift every 10 s over 500 rows). The
    rows alternate off/on ``--rounds`` times to spread the noise of a shared machine.
    """
    from kiln.monitor.profile import write_reference_profile

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
                    r = asyncio.run(drive(url, texts, concurrency, args.duration_s))
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
