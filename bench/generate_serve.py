"""Serving text generation: ``kiln serve`` against plain servers and llama.cpp, one run.

    python bench/generate_serve.py [--llama-server PATH --gguf fp32=F16.gguf --gguf int8=Q8_0.gguf]
        [--concurrency 1 4 16 64] [--warmup-s 5] [--window-s 15] [--soak-seconds 600] [--quick]

The same SmolLM2-135M packages (fp32, and int8 through ``kiln.compress`` quantize-torch; built
by ``bench/generate_models.py``'s helpers once and kept under ``--work``), the same prompts
(questions of the chatterbot-corpus English question/answer pairs, rendered through the
package's chat template and sent to every server as one ``/v1/completions`` prompt), greedy,
``--new-tokens`` at most (answers end at EOS, so every server generates the same tokens; output
tokens are counted by re-tokenizing the streamed text), streamed as Server-Sent Events:

- ``kiln``: a real ``kiln serve`` process, continuous batching (``max_sequences`` =
  ``--kiln-max-sequences``), its OpenAI endpoint.
- ``plain-Nt``: FastAPI + uvicorn, ``generate()`` once per request in its own thread, streamed
  with ``TextIteratorStreamer`` (the pattern of transformers' docs), N torch threads.
- ``static-Nt-bB-wW``: the same with static batching: up to B requests collected within W ms of
  the first, generated together with left padding, each row streamed as its tokens come (a
  row's stream ends at its EOS; its slot stays busy until the batch ends). B, W and N are tuned
  at c=16 on fp32 (``--static-grid``) and the best is used for every row.
- ``llama.cpp``: ``llama-server`` (``--llama-server``) with ``-t 2 -np C`` at concurrency C on
  the GGUF given per package (``--gguf``); skipped with a message when absent.

Closed loop: C clients each send a request, read its stream, repeat. Each (server,
concurrency) runs ``--warmup-s`` unmeasured, then a fixed ``--window-s`` window (not a fixed
request count, so slow servers at c=64 end in bounded time); clients are cut off at the window's
end. Output tokens/s counts tokens that arrived inside the window. Inter-token latency: the gap
between two stream events of one request inside the window, divided by the tokens the later one
carries. TTFT: requests started inside the window (every request when none did); one still
without a first token at the window's end counts as its time so far and the percentile is
printed with ``>=``. RSS: the server's peak resident memory during the cell. Configurations are
interleaved (each concurrency runs every server in turn) so that load from other processes on
the machine hits all of them alike. ``bare loop``: the package's model called in this process,
``model(input_ids[:, -1:], cache=...)`` one greedy token at a time, 2 threads, run between the
servers at c=1. ``--soak-seconds``: Kiln's RSS at c=16 over that long, sampled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_models import smollm2_package  # noqa: E402

QUALITY_PROMPTS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
)


@dataclass
class Request:
    """One streamed request as the client saw it."""

    start: float
    events: list[tuple[float, str]] = field(default_factory=list)
    is_finished: bool = False


@dataclass(frozen=True)
class Cell:
    """One (server, concurrency) measurement."""

    tokens_per_s: float
    ttft_ms: tuple[float, float]  # p50, p99
    ttft_censored: tuple[bool, bool]  # whether each percentile is a lower bound
    itl_ms: tuple[float, float]  # p50, p99
    completed: int
    rss_mib: float


# ---- packages and prompts --------------------------------------------------------------------


def packages(work: Path, labels: list[str]) -> dict[str, Path]:
    """The fp32 SmolLM2 package and its int8 child, built once under ``work``."""
    import kiln.compress
    from kiln.config.schema import CompressConfig

    fp32 = work / "fp32"
    if not (fp32 / "kiln.json").exists():
        smollm2_package(fp32, eval_docs=4)
    found = {"fp32": fp32}
    if "int8" in labels:
        int8 = work / "int8" / "package"
        if not (int8 / "kiln.json").exists():
            cfg = CompressConfig.parse({"eval_samples": 4}, source="bench")
            result = kiln.compress.run(fp32, output_dir=work / "int8", config=cfg, steps=["quantize-torch"])
            result.packages[0].rename(int8)
        found["int8"] = int8
    return {label: found[label] for label in labels}


def questions(count: int, seed: int = 0) -> list[str]:
    """Questions of the chatterbot-corpus pairs, a seeded sample."""
    from kiln.data.faq import load_faq

    asked, _ = load_faq()
    return random.Random(seed).sample(asked, min(count, len(asked)))


# ---- the baseline servers (run in their own process) -----------------------------------------


def plain_app(package: Path, *, threads: int, batch_size: int, wait_ms: float) -> Any:
    """FastAPI + transformers: one ``generate()`` per request (batch_size 0) or static batches."""
    import torch
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import PreTrainedTokenizerFast, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    from kiln.runtime.generation import load_generator

    torch.set_num_threads(threads)
    generator = load_generator(package, device="cpu", num_threads=threads)
    model = generator.model  # the package's HF model (int8 Linear layers rebuilt by Kiln's loader)
    eos = generator.eos_id
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(package / "tokenizer.json"), padding_side="left")
    tokenizer.pad_token_id = eos
    busy = [0]
    active: set[threading.Event] = set()  # the client-gone flags of requests in flight

    class Cancelled(StoppingCriteria):
        def __init__(self, flags: list[threading.Event]) -> None:
            self.flags = flags

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            gone = all(f.is_set() for f in self.flags)
            return torch.full((input_ids.shape[0],), gone, dtype=torch.bool, device=input_ids.device)

    def generate(**kwargs: Any) -> None:
        torch.set_num_threads(threads)
        busy[0] += 1
        try:
            with torch.inference_mode():
                model.generate(**kwargs, do_sample=False, pad_token_id=eos, eos_token_id=eos)
        finally:
            busy[0] -= 1

    def sse(pieces: Any, gone: threading.Event) -> Any:
        active.add(gone)
        try:
            for text in pieces:
                if text:
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'text': text}]})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            gone.set()
            active.discard(gone)

    def cancelled(flags: list[threading.Event]) -> StoppingCriteriaList:
        return StoppingCriteriaList([Cancelled(flags)])

    batcher = StaticBatcher(tokenizer, generate, cancelled, batch_size, wait_ms / 1000) if batch_size else None
    app = FastAPI()

    @app.post("/v1/completions")
    def complete(body: dict[str, Any]) -> StreamingResponse:
        gone = threading.Event()
        if batcher is not None:
            pieces = batcher.submit(body["prompt"], body["max_tokens"], gone)
            return StreamingResponse(sse(pieces, gone), media_type="text/event-stream")
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        inputs = tokenizer(body["prompt"], return_tensors="pt")
        kwargs = dict(inputs, max_new_tokens=body["max_tokens"], streamer=streamer)
        kwargs["stopping_criteria"] = cancelled([gone])
        threading.Thread(target=generate, kwargs=kwargs, daemon=True).start()
        return StreamingResponse(sse(streamer, gone), media_type="text/event-stream")

    @app.post("/reset")
    def reset() -> dict[str, int]:
        # The bench cuts clients off at a window's end; a sync streaming response only sees that
        # at its next piece, so it is told here, and the generations stop at their next step.
        flags = list(active)
        for gone in flags:
            gone.set()
        return {"cancelled": len(flags)}

    @app.get("/busy")
    def is_busy() -> dict[str, int]:
        return {"generating": busy[0] + (batcher.queued if batcher else 0)}

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


class StaticBatcher:
    """Collect up to ``size`` prompts within ``wait_s`` of the first; generate them together."""

    def __init__(self, tokenizer: Any, generate: Any, cancelled: Any, size: int, wait_s: float) -> None:
        import queue

        self.tokenizer, self.generate, self.cancelled = tokenizer, generate, cancelled
        self.size, self.wait_s = size, wait_s
        self.inbox: queue.Queue[tuple[str, int, Any, threading.Event]] = queue.Queue()
        threading.Thread(target=self._work, daemon=True).start()

    @property
    def queued(self) -> int:
        return self.inbox.qsize()

    def submit(self, prompt: str, max_tokens: int, gone: threading.Event) -> Any:
        import queue

        out: queue.Queue[str | None] = queue.Queue()
        self.inbox.put((prompt, max_tokens, out, gone))
        return iter(out.get, None)

    def _work(self) -> None:
        import queue

        while True:
            batch = [self.inbox.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.size:
                try:
                    batch.append(self.inbox.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            inputs = self.tokenizer([p for p, _, _, _ in batch], return_tensors="pt", padding=True)
            streamer = RowStreamer(self.tokenizer, [out for _, _, out, _ in batch])
            try:
                self.generate(
                    **inputs,
                    max_new_tokens=max(n for _, n, _, _ in batch),
                    streamer=streamer,
                    stopping_criteria=self.cancelled([gone for _, _, _, gone in batch]),
                )
            finally:
                streamer.end()


class RowStreamer:
    """A streamer for a batch: each row's new text goes to its own queue until its EOS."""

    def __init__(self, tokenizer: Any, outs: list[Any]) -> None:
        self.tokenizer, self.outs = tokenizer, outs
        self.ids: list[list[int]] = [[] for _ in outs]
        self.sent = [0] * len(outs)
        self.done = [False] * len(outs)
        self.is_prompt = True

    def put(self, value: Any) -> None:
        if self.is_prompt:  # generate() hands the prompt ids over first
            self.is_prompt = False
            return
        for row, token in enumerate(value.reshape(len(self.outs)).tolist()):
            if self.done[row]:
                continue
            if token == self.tokenizer.pad_token_id:
                self.done[row] = True
                self.outs[row].put(None)
                continue
            self.ids[row].append(token)
            text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # wait for the rest of a UTF-8 character
                self.outs[row].put(text[self.sent[row] :])
                self.sent[row] = len(text)

    def end(self) -> None:
        for row, out in enumerate(self.outs):
            if not self.done[row]:
                self.done[row] = True
                out.put(None)


# ---- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process under test."""

    label: str
    argv: list[str]
    health: str
    env: dict[str, str] = field(default_factory=dict)
    base: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        argv = [a.replace("{port}", str(port)) for a in self.argv]
        src = Path(__file__).resolve().parents[1] / "src"
        full_env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **self.env)
        self.proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + self.health, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.label} exited before it was ready: {' '.join(argv)}")
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"{self.label} not ready after 180 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def rss_mib(self) -> float:
        assert self.proc is not None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        except FileNotFoundError:
            pass
        return float("nan")

    def settle(self) -> None:
        """Wait until the server generates nothing (the plain ones go on after a client leaves)."""
        if self.label.startswith(("plain", "static")):
            httpx.post(self.base + "/reset", timeout=10)
            deadline = time.monotonic() + 120
            while httpx.get(self.base + "/busy", timeout=10).json()["generating"] and time.monotonic() < deadline:
                time.sleep(0.2)
        time.sleep(0.5)


def kiln_server(package: Path, work: Path, max_sequences: int, threads: int | None) -> Server:
    """``kiln serve`` with its defaults (``num_threads: auto``) or ``threads`` intra-op threads."""
    settings: dict[str, Any] = {
        "models": [{"name": "bench", "versions": {1: str(package)}, "generation": {"max_sequences": max_sequences}}]
    }
    if threads:
        settings["num_threads"] = threads
    path = work / f"serve-{package.parent.name}-{package.name}-{threads or 'auto'}.yaml"
    path.write_text(yaml.safe_dump(settings))
    argv = [sys.executable, "-m", "kiln.cli.main", "serve", "--config", str(path), "--port", "{port}"]
    return Server(f"kiln-{threads}t" if threads else "kiln", argv, "/v2/health/ready")


def plain_server(package: Path, *, threads: int, batch_size: int = 0, wait_ms: float = 0.0) -> Server:
    label = f"static-{threads}t-b{batch_size}-w{wait_ms:g}" if batch_size else f"plain-{threads}t"
    argv = [
        sys.executable, str(Path(__file__).resolve()), "--plain-server", "{port}", "--package", str(package),
        "--threads", str(threads), "--batch-size", str(batch_size), "--batch-wait-ms", str(wait_ms),
    ]  # fmt: skip
    return Server(label, argv, "/v2/health/ready", env={"OMP_NUM_THREADS": str(threads)})


def llama_server(binary: Path, gguf: Path, concurrency: int) -> Server:
    argv = [
        str(binary), "-m", str(gguf), "-t", "2", "-tb", "2", "-np", str(concurrency),
        "-c", str(1024 * concurrency), "--host", "127.0.0.1", "--port", "{port}", "--no-webui",
    ]  # fmt: skip
    return Server("llama.cpp", argv, "/health")


# ---- load ------------------------------------------------------------------------------------


async def stream_one(client: httpx.AsyncClient, url: str, body: dict[str, Any], request: Request) -> None:
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return
            choices = json.loads(line[6:]).get("choices") or [{}]
            text = choices[0].get("text")
            if text:
                request.events.append((time.perf_counter(), text))


async def closed_loop(
    url: str, prompts: list[str], concurrency: int, *, warmup_s: float, window_s: float, new_tokens: int
) -> tuple[list[Request], float, float]:
    """``concurrency`` clients send, read, repeat; cut off at the window's end."""
    requests: list[Request] = []
    window_start = time.perf_counter() + warmup_s
    window_end = window_start + window_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None)) as client:

        async def worker(first: int) -> None:
            index = first
            while (left := window_end - time.perf_counter()) > 0:
                request = Request(time.perf_counter())
                requests.append(request)
                body = {"model": "bench", "prompt": prompts[index % len(prompts)], "max_tokens": new_tokens}
                body |= {"temperature": 0.0, "stream": True}
                try:
                    await asyncio.wait_for(stream_one(client, url, body, request), timeout=left)
                except TimeoutError:
                    return
                request.is_finished = True
                index += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return requests, window_start, window_end


def summarize(requests: list[Request], start: float, end: float, count_tokens: Any) -> dict[str, Any]:
    tokens, gaps, ttfts, censored = 0, [], [], []
    timed = [r for r in requests if r.start >= start] or requests
    for request in requests:
        previous = None
        for at, text in request.events:
            n = count_tokens(text)
            if start <= at < end:
                tokens += n
                if previous is not None:
                    gaps += [(at - previous) / n] * n
            previous = at
    for request in timed:
        if request.events:
            ttfts.append(request.events[0][0] - request.start)
        else:
            censored.append(end - request.start)
    ttft_all = np.array(ttfts + censored)
    ttft = tuple(float(np.percentile(ttft_all, q)) * 1000 for q in (50, 99))
    floor = min(censored) * 1000 if censored else float("inf")
    itl = tuple(float(np.percentile(gaps, q)) * 1000 for q in (50, 99)) if gaps else (float("nan"),) * 2
    completed = sum(1 for r in requests if r.is_finished)
    return {
        "tokens_per_s": tokens / (end - start),
        "ttft_ms": ttft,
        "ttft_censored": tuple(v >= floor for v in ttft),
        "itl_ms": itl,
        "completed": completed,
    }


def measure(server: Server, prompts: list[str], concurrency: int, args: argparse.Namespace, count: Any) -> Cell:
    peak = [server.rss_mib()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            peak[0] = max(peak[0], server.rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    url = server.base + "/v1/completions"
    try:
        requests, start, end = asyncio.run(
            closed_loop(
                url, prompts, concurrency, warmup_s=args.warmup_s, window_s=args.window_s, new_tokens=args.new_tokens
            )
        )
    finally:
        stop.set()
        sampler.join()
    server.settle()
    return Cell(**summarize(requests, start, end, count), rss_mib=peak[0])


def answers(server: Server, prompts: list[str], new_tokens: int) -> list[str]:
    """Greedy answers, one request at a time."""
    texts = []
    for prompt in prompts:
        request = Request(time.perf_counter())
        body = {"model": "bench", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0.0, "stream": True}

        async def one(body: dict[str, Any] = body, request: Request = request) -> None:
            async with httpx.AsyncClient(timeout=None) as client:
                await stream_one(client, server.base + "/v1/completions", body, request)

        asyncio.run(one())
        texts.append("".join(text for _, text in request.events))
    return texts


# ---- the bare decode loop --------------------------------------------------------------------


def bare_loop_ms(generator: Any, prompts: list[str], new_tokens: int, budget_s: float) -> float:
    """Median time of one greedy decode step, the model called directly with its KV cache."""
    import torch

    steps: list[float] = []
    end = time.perf_counter() + budget_s
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([generator.prepare(prompt).token_ids])
            out = generator.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(new_tokens - 1):
                began = time.perf_counter()
                out = generator.model(input_ids=token, cache=out.cache, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                int(token)  # a server needs the token id on the host each step
                steps.append(time.perf_counter() - began)
                if began > end:
                    return statistics.median(steps) * 1000
    return statistics.median(steps) * 1000


def bare_loops(generator: Any, prompts: list[str], args: argparse.Namespace) -> dict[int, float]:
    """The bare loop's step time with 2 threads (Kiln's ``auto`` alone) and with 1."""
    import torch

    steps = {}
    for threads in (2, 1):
        torch.set_num_threads(threads)
        steps[threads] = bare_loop_ms(generator, prompts, args.new_tokens, args.window_s)
    torch.set_num_threads(2)
    return steps


# ---- the run ---------------------------------------------------------------------------------


def fmt_ttft(cell: Cell) -> str:
    return "/".join(
        (">=" if bound else "") + f"{value:.0f}" for value, bound in zip(cell.ttft_ms, cell.ttft_censored, strict=True)
    )


def row(package: str, label: str, concurrency: int, cell: Cell) -> None:
    print(
        f"| {package} | {label} | {concurrency} | {cell.tokens_per_s:.1f} | {fmt_ttft(cell)} | "
        f"{cell.itl_ms[0]:.1f}/{cell.itl_ms[1]:.1f} | {cell.completed} | {cell.rss_mib:.0f} |",
        flush=True,
    )


def tune_static(package: Path, prompts: list[str], args: argparse.Namespace, count: Any) -> tuple[int, int, float]:
    """The static batcher's best (threads, batch size, wait ms) at c=16 by output tokens/s."""
    best: tuple[float, tuple[int, int, float]] = (-1.0, (1, 16, 20.0))
    print("\n## Static batching tuned at c=16 (fp32)\n| threads | batch size | wait ms | tokens/s |\n|---|---|---|---|")
    for threads in args.threads:
        for spec in args.static_grid:
            size, wait = (float(x) for x in spec.split(":"))
            server = plain_server(package, threads=threads, batch_size=int(size), wait_ms=wait)
            server.start()
            try:
                cell = measure(server, prompts, 16, args, count)
            finally:
                server.stop()
            print(f"| {threads} | {size:.0f} | {wait:g} | {cell.tokens_per_s:.1f} |", flush=True)
            best = max(best, (cell.tokens_per_s, (threads, int(size), wait)))
    return best[1]


def run_package(
    label: str, package: Path, prompts: list[str], static: tuple[int, int, float], args: argparse.Namespace
) -> dict[str, dict[int, Cell | float]]:
    """Every server on one package, concurrencies interleaved; the bare loop at c=1."""
    from kiln.runtime.generation import load_generator

    generator = load_generator(package, device="cpu", num_threads=2)
    count = _counter(generator)
    servers = [kiln_server(package, args.work, args.kiln_max_sequences, t) for t in args.kiln_threads]
    if "plain" in args.servers:
        servers += [plain_server(package, threads=t) for t in args.threads]
    if "static" in args.servers:
        threads, size, wait = static
        servers.append(plain_server(package, threads=threads, batch_size=size, wait_ms=wait))
    gguf = dict(spec.split("=", 1) for spec in args.gguf).get(label)
    has_llama = (
        "llama" in args.servers and args.llama_server is not None and args.llama_server.exists() and gguf is not None
    )
    results: dict[str, dict[int, Cell | float]] = {}
    quality_prompts = [generator.render([{"role": "user", "content": q}]) for q in QUALITY_PROMPTS[: args.quality]]
    reference = [g.text for g in generator.generate(quality_prompts, max_new_tokens=args.quality_tokens, temperature=0)]
    quality: dict[str, list[str]] = {"in-process generate()": reference}
    for server in servers:
        server.start()
        quality[server.label] = answers(server, quality_prompts, args.quality_tokens)
    if has_llama:
        llama = llama_server(args.llama_server, Path(gguf or ""), 1)
        llama.start()
        quality["llama.cpp"] = answers(llama, quality_prompts, args.quality_tokens)
        llama.stop()
    try:
        for step, concurrency in enumerate(args.concurrency):
            order = servers[step % len(servers) :] + servers[: step % len(servers)]
            for server in order:
                results.setdefault(server.label, {})[concurrency] = cell = measure(
                    server, prompts, concurrency, args, count
                )
                row(label, server.label, concurrency, cell)
                if concurrency == 1 and server is servers[0]:
                    results["bare loop"] = bare_loops(generator, prompts[:3], args)
            if has_llama:
                llama = llama_server(args.llama_server, Path(gguf or ""), concurrency)
                llama.start()
                try:
                    results.setdefault("llama.cpp", {})[concurrency] = cell = measure(
                        llama, prompts, concurrency, args, count
                    )
                finally:
                    llama.stop()
                row(label, f"llama.cpp {Path(gguf or '').name}", concurrency, cell)
        if args.soak_seconds > 0 and label == next(iter(args.packages)):
            soak(servers[0], prompts, args)
    finally:
        for server in servers:
            server.stop()
    if not has_llama:
        print(f"llama.cpp skipped for {label}: pass --llama-server PATH (built) and --gguf {label}=FILE")
    print(f"\n### Greedy answers ({label}, {args.quality_tokens} tokens at most)")
    for i, question in enumerate(QUALITY_PROMPTS[: args.quality]):
        print(f"- {question}")
        for name, texts in quality.items():
            same = "same as in-process" if texts[i] == reference[i] else "differs"
            print(f"  - {name} ({same}): {texts[i][:100]!r}")
    return results


def soak(server: Server, prompts: list[str], args: argparse.Namespace) -> None:
    """Kiln's RSS over ``--soak-seconds`` of c=16 closed-loop load."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    every = max(1.0, args.soak_seconds / 60)
    began = time.perf_counter()

    def sample() -> None:
        samples.append((0.0, server.rss_mib()))
        while not stop.wait(every):
            samples.append((time.perf_counter() - began, server.rss_mib()))
            print(f"soak {samples[-1][0]:.0f} s: RSS {samples[-1][1]:.0f} MiB", flush=True)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        requests, start, end = asyncio.run(
            closed_loop(
                server.base + "/v1/completions",
                prompts,
                16,
                warmup_s=0.0,
                window_s=args.soak_seconds,
                new_tokens=args.new_tokens,
            )  # fmt: skip
        )
    finally:
        stop.set()
        sampler.join()
    rss = [value for _, value in samples]
    done = sum(1 for r in requests if r.events)
    print(
        f"\n## Soak: kiln fp32 at c=16 for {args.soak_seconds:.0f} s ({done} requests, RSS sampled every "
        f"{every:.0f} s): start {rss[0]:.0f} MiB, end {rss[-1]:.0f} MiB, max {max(rss):.0f} MiB, "
        f"end - start {rss[-1] - rss[0]:+.0f} MiB; after the first minute: "
        f"{next(v for t, v in samples if t >= min(60.0, samples[-1][0])):.0f} -> {rss[-1]:.0f} MiB"
    )


def goals(results: dict[str, dict[int, Any]], label: str) -> None:
    """Kiln (each of its configurations) against the goals of the benchmark."""
    plain = [r[16].tokens_per_s for name, r in results.items() if name.startswith("plain")]
    static = [r[16].tokens_per_s for name, r in results.items() if name.startswith("static")]
    bare = results["bare loop"]
    print(f"\n### Goals ({label})")
    for name, kiln in results.items():
        if not name.startswith("kiln"):
            continue
        threads = 1 if name == "kiln-1t" else 2  # auto gives a sequence batch running alone every core
        print(f"- {name}:")
        if plain:
            print(f"  - c=16 tokens/s vs best plain: {_ratio(kiln[16].tokens_per_s, max(plain))} (goal >= 4x)")
        if static:
            print(f"  - c=16 tokens/s vs static batching: {_ratio(kiln[16].tokens_per_s, static[0])} (goal >= 1.5x)")
        itl = _ratio(kiln[1].itl_ms[0], bare[threads])
        print(
            f"  - c=1 ITL p50 {kiln[1].itl_ms[0]:.1f} ms vs bare loop ({threads} threads) "
            f"{bare[threads]:.1f} ms: {itl} (goal <= 1.1x)"
        )
        print(f"  - TTFT p99 c=16 / c=1: {_ratio(kiln[16].ttft_ms[1], kiln[1].ttft_ms[1])} (goal <= 3x)")
        for c, cell in results.get("llama.cpp", {}).items():
            print(f"  - vs llama.cpp at c={c}: {_ratio(kiln[c].tokens_per_s, cell.tokens_per_s)} tokens/s")


def _ratio(mine: float, theirs: float) -> str:
    return f"{mine / theirs:.2f}x" if theirs > 0 else "n/a (nothing to compare with)"


def _counter(generator: Any) -> Any:
    cache: dict[str, int] = {}

    def count(text: str) -> int:
        if text not in cache:
            cache[text] = max(1, len(generator.tokenizer.encode(text, add_special_tokens=False).ids))
        return cache[text]

    return count


def main() -> None:
    parser = argparse.ArgumentParser(description="kiln serve (continuous batching) against plain generation servers")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kiln-bench-generate-serve"), help="packages kept here")
    parser.add_argument("--packages", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--warmup-s", type=float, default=5.0, help="unmeasured seconds before each window")
    parser.add_argument("--window-s", type=float, default=15.0, help="measured seconds per (server, concurrency)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=64, help="chatterbot questions cycled through")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads of the plain servers")
    parser.add_argument("--static-grid", nargs="+", default=["16:20", "64:20", "64:200"], help="SIZE:WAIT_MS")
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=["plain", "static", "llama"],
        default=["plain", "static", "llama"],
        help="peers measured beside kiln",
    )
    parser.add_argument("--static", help="THREADS:SIZE:WAIT_MS of the static batcher, instead of tuning it")
    parser.add_argument("--kiln-max-sequences", type=int, default=64)
    parser.add_argument(
        "--kiln-threads", type=int, nargs="+", default=[0, 1], help="kiln's num_threads (0: its default, auto)"
    )
    parser.add_argument("--llama-server", type=Path, help="llama.cpp's llama-server binary (skipped when absent)")
    parser.add_argument("--gguf", nargs="*", default=[], help="PACKAGE=FILE: the GGUF llama.cpp serves per package")
    parser.add_argument("--quality", type=int, default=3, help="fixed questions answered greedily by each server")
    parser.add_argument("--quality-tokens", type=int, default=32)
    parser.add_argument("--soak-seconds", type=float, default=0.0, help="Kiln's RSS at c=16 over this long (fp32)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--plain-server", type=int, help=argparse.SUPPRESS)  # internal: serve a baseline on PORT
    parser.add_argument("--package", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--batch-wait-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        import uvicorn

        app = plain_app(args.package, threads=args.threads[0], batch_size=args.batch_size, wait_ms=args.batch_wait_ms)
        uvicorn.run(app, host="127.0.0.1", port=args.plain_server, log_level="warning", access_log=False)
        return
    if args.quick:
        args.packages, args.concurrency, args.threads, args.kiln_threads = ["fp32"], [1, 16], [1], [0]
        args.warmup_s, args.window_s, args.new_tokens, args.prompts = 1.0, 3.0, 32, 8
        args.quality, args.quality_tokens, args.static_grid = 1, 16, ["16:20"]
    import torch

    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    built = packages(args.work, args.packages)
    from kiln.runtime.generation import load_generator

    fp32 = load_generator(built["fp32"] if "fp32" in built else next(iter(built.values())), device="cpu")
    prompts = [fp32.render([{"role": "user", "content": q}]) for q in questions(args.prompts)]
    count = _counter(fp32)
    static = (args.threads[0], 16, 20.0)
    if args.static:
        threads, size, wait = args.static.split(":")
        static = (int(threads), int(size), float(wait))
    elif not args.quick and "static" in args.servers:
        static = tune_static(next(iter(built.values())), prompts, args, count)
    print(
        f"\n## Closed loop: {args.new_tokens} tokens at most, greedy, {args.warmup_s:g} s warm-up + "
        f"{args.window_s:g} s window per cell\n"
        "| package | server | c | output tokens/s | TTFT p50/p99 ms | ITL p50/p99 ms | completed | RSS MiB |\n"
        "|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    for label, package in built.items():
        results = run_package(label, package, prompts, static, args)
        bare = results["bare loop"]
        print(f"bare decode loop ({label}): {bare[2]:.1f} ms/token with 2 threads, {bare[1]:.1f} with 1")
        if {1, 16} <= set(args.concurrency):
            goals(results, label)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
