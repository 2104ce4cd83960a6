"""Serving load: requests/s, tokens/s and latency of ``serve`` at 1, 4 and 16 concurrent clients, next to offline
``generate`` (the library's batched decoder) on the same prompts.

Prompts: the first ``--prompts`` conversations of the shipped HelpSteer sample (the default steering label), each
asked as a chat request with ``temperature: 0`` and ``max_tokens=--new-tokens``. Offline: the same conversations
through :func:`~nemo_steerlm.models.generation.generate_full` in this process (``batch_size=--batch``, greedy),
timed after a warm-up batch. Serving: ``nemo-steerlm serve`` started in a subprocess on a free port
(``max_batch=--batch``); each of C clients (threads, plain HTTP) sends its share of the prompts one after another,
after one warm-up request. Tokens count the completion tokens the server reports (``usage``).

Usage::

    python benchmarks/serve_throughput.py --model runs/sft/sft.nemo [--prompts 32] [--new-tokens 32]
        [--batch 16] [--clients 1,4,16] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _doc import DOC, cpu_model, update_section  # benchmarks/ is the script's folder

START, END = "<!-- serve_throughput:start -->", "<!-- serve_throughput:end -->"


def conversations(count: int) -> list:
    """The sample's first ``count`` conversations, the assistant answer dropped."""
    from nemo_steerlm.attributes import AttributeSchema
    from nemo_steerlm.data.sources import helpsteer_to_conversation, load_helpsteer
    from nemo_steerlm.models.generation import prompt_conversation
    from nemo_steerlm.resources import helpsteer_sample_path

    schema = AttributeSchema()
    rows = load_helpsteer(str(helpsteer_sample_path()), schema)["train"][:count]
    return [prompt_conversation(helpsteer_to_conversation(r, schema))[0] for r in rows]


def offline(model_path: Path, convs: list, args: argparse.Namespace) -> dict:
    """Tokens/s of the library's batched greedy decoding on the conversations (after a warm-up batch)."""
    from nemo_steerlm.models.checkpoint import restore_nemo
    from nemo_steerlm.models.generation import SamplingParams, generate_full

    model = restore_nemo(model_path, "sft")
    params = SamplingParams(max_new_tokens=args.new_tokens, greedy=True, batch_size=args.batch)
    generate_full(model, convs[: args.batch], None, params)
    start = time.perf_counter()
    results = generate_full(model, convs, None, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(r.token_ids) for r in results)
    return {"seconds": seconds, "tokens": tokens, "texts": [r.text for r in results]}


def start_server(model_path: Path, batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    """``nemo-steerlm serve`` on a free port; returns the process and its URL once it answers."""
    out = log.with_suffix("")
    args = [sys.executable, "-m", "nemo_steerlm.cli", "serve", f"model={model_path}", "port=0", f"output_dir={out}"]
    args += [f"max_batch={batch}", "max_pending=256"]
    with open(log, "w") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
    while True:
        found = re.search(r"listening on (http://\S+)", log.read_text())
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise SystemExit(log.read_text()[-3000:])
        time.sleep(0.2)


def load(url: str, convs: list, clients: int, new_tokens: int) -> dict:
    """C clients, each sending its share of the prompts one after another."""
    import httpx

    bodies = [{"messages": [{"role": "system", "content": c.system}, {"role": "user", "content": c.turns[0].value}],
               "max_tokens": new_tokens, "temperature": 0} for c in convs]  # fmt: skip
    latencies: list[float] = []
    tokens: list[int] = []
    texts: dict[int, str] = {}

    def client(k: int) -> None:
        with httpx.Client(timeout=600) as http:
            for i in range(k, len(bodies), clients):
                t0 = time.perf_counter()
                res = http.post(f"{url}/v1/chat/completions", json=bodies[i]).json()
                latencies.append(time.perf_counter() - t0)
                tokens.append(res["usage"]["completion_tokens"])
                texts[i] = res["choices"][0]["message"]["content"]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    seconds = time.perf_counter() - start
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(int(q * len(ordered)), len(ordered) - 1)]  # noqa: E731
    return {"clients": clients, "seconds": seconds, "requests_s": len(bodies) / seconds,
            "tokens_s": sum(tokens) / seconds, "p50": pick(0.5), "p99": pick(0.99),
            "texts": [texts[i] for i in range(len(bodies))]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a SteerLM SFT .nemo")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    convs = conversations(args.prompts)
    base = offline(args.model, convs, args)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args.model, args.batch, Path(tmp) / "serve.log")
        try:
            load(url, convs[:1], 1, args.new_tokens)  # warm-up
            for c in (int(x) for x in args.clients.split(",")):
                runs.append(load(url, convs, c, args.new_tokens))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    same = [sum(a == b for a, b in zip(r["texts"], base["texts"], strict=True)) for r in runs]
    result = {"machine": f"{os.cpu_count()} CPUs ({cpu_model()})", "prompts": len(convs), "new_tokens": args.new_tokens,
              "batch": args.batch, "offline_tokens_s": base["tokens"] / base["seconds"],
              "offline_requests_s": len(convs) / base["seconds"], "load": os.getloadavg(),
              "runs": [{k: v for k, v in r.items() if k != "texts"} | {"same_as_offline": s}
                       for r, s in zip(runs, same, strict=True)]}  # fmt: skip
    print(json.dumps(result, indent=1))
    if not args.no_write:
        write(result, args)


def write(r: dict, args: argparse.Namespace) -> None:
    """Rewrites the serving section of docs/benchmarks.md with this run."""
    rows = [f"| offline `generate` (batch {r['batch']}) | {r['offline_requests_s']:.2f} | {r['offline_tokens_s']:.1f} "
            f"| 1.00 | – | – | {r['prompts']}/{r['prompts']} |"]  # fmt: skip
    for run in r["runs"]:
        ratio = run["tokens_s"] / r["offline_tokens_s"]
        rows.append(f"| `serve`, {run['clients']} client{'s' if run['clients'] > 1 else ''} | {run['requests_s']:.2f} "
                    f"| {run['tokens_s']:.1f} | {ratio:.2f} | {run['p50']:.2f} | {run['p99']:.2f} "
                    f"| {run['same_as_offline']}/{r['prompts']} |")  # fmt: skip
    load = ", ".join(f"{x:.2f}" for x in r["load"])
    section = "\n".join([
        START,
        "## serve: load at 1, 4 and 16 concurrent clients vs offline generate",
        "",
        f"Machine: {r['machine']}. Model: `{args.model.name}`. {r['prompts']} HelpSteer sample prompts, greedy, "
        f"{r['new_tokens']} new tokens at most, server `max_batch={r['batch']}`.",
        "",
        f"Command: `python benchmarks/serve_throughput.py --model {args.model.name} --prompts {r['prompts']} "
        f"--new-tokens {r['new_tokens']} --batch {r['batch']}`",
        "",
        "| run | requests/s | tokens/s | × offline tokens/s | p50 s | p99 s | answers equal to offline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Load average at the end of the run: {load}.",
        END,
    ])  # fmt: skip
    update_section(section + "\n", START, END, DOC)


if __name__ == "__main__":
    main()
