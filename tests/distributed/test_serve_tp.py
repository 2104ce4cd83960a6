"""`nemo-steerlm serve` on a TP=2 layout (torchrun, gloo): rank 0 serves HTTP, rank 1 follows its broadcasts.

Greedy answers are compared with what the real `generate` CLI writes on the same layout for the same conversations,
label and token budget; concurrent answers with the one-at-a-time answers. A stream whose client goes away must stop
on both ranks (the next request still answers), and stopping rank 0 must stop the whole job (no process left).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from steerlm_test_helpers.cli import ok, steerlm
from steerlm_test_helpers.serve import LISTENING, serve

pytestmark = pytest.mark.distributed
NEW = 10
TP2 = ("trainer.devices=2", "layout.tensor_model_parallel_size=2")


@pytest.fixture(scope="module")
def tiny_sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_sft") / "run"
    ok(steerlm("train-sft", f"output_dir={out}", "trainer.max_steps=4", "trainer.val_check_interval=4"))
    return out


def _prompts(tiny_sft: Path, path: Path) -> list[dict]:
    rows = [json.loads(x) for x in (tiny_sft / "data" / "sft" / "val.jsonl").read_text().splitlines()[:3]]
    lines = [*rows, {"prompt": "Name three rivers in Europe.", "system": "Answer in one line."}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return lines


def _messages(line: dict) -> list[dict]:
    if "prompt" in line:
        return [{"role": "system", "content": line["system"]}, {"role": "user", "content": line["prompt"]}]
    turns = line["conversations"][:-1]  # the trailing assistant answer is the reference generate drops
    out = [{"role": "system", "content": line["system"]}]
    for t in turns:
        role = "user" if t["from"] == "User" else "assistant"
        out.append({"role": role, "content": t["value"], **({"label": t["label"]} if t["label"] else {})})
    return out


def test_tp2_server_answers_what_generate_writes_and_stops_all_ranks(tiny_sft: Path, tmp_path: Path) -> None:
    lines = _prompts(tiny_sft, tmp_path / "prompts.jsonl")
    args = [f"model={tiny_sft / 'sft.nemo'}", f"data={tmp_path / 'prompts.jsonl'}", f"output_dir={tmp_path / 'gen'}"]
    ok(steerlm("generate", *args, *TP2, f"sampling.max_new_tokens={NEW}", "sampling.greedy=true", "steer.verbosity=1"))
    expected = [json.loads(x) for x in (tmp_path / "gen" / "generations.jsonl").read_text().splitlines()]
    label = expected[0]["label"]
    assert label.endswith("verbosity:1")
    out = tmp_path / "served"
    with serve(tiny_sft / "sft.nemo", out, *TP2, "batch_wait_ms=50") as url:

        def chat(messages: list[dict], max_tokens: int = NEW) -> dict:
            body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "steer": {"verbosity": 1}}
            res = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
            assert res.status_code == 200, res.text
            return res.json()

        for line, gen in zip(lines, expected, strict=True):
            got = chat(_messages(line))
            assert got["steer_label"] == label
            assert got["choices"][0]["message"]["content"] == gen["response"]
            assert got["usage"]["completion_tokens"] == len(gen["response_token_ids"])
            assert got["usage"]["prompt_tokens"] == gen["prompt_tokens"]

        # a stream whose client goes away stops on both ranks; the next requests still answer
        body = {"messages": [{"role": "user", "content": "Write a long essay."}], "max_tokens": 300, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as res:
            lines_seen = res.iter_lines()
            assert next(lines_seen).startswith("data: ")
            assert next(x for x in lines_seen if x).startswith("data: ")
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health").json()["pending"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.get(f"{url}/health").json()["generated_tokens"] < 300

        questions = [[{"role": "user", "content": f"Question {i}: what is {i} plus {i + 2}?"}] for i in range(6)]
        alone = [chat(q)["choices"][0]["message"]["content"] for q in questions]
        with ThreadPoolExecutor(6) as pool:
            together = [r["choices"][0]["message"]["content"] for r in pool.map(chat, questions)]
        assert together == alone
        assert httpx.get(f"{url}/health").json()["largest_batch"] > 1
    summary = json.loads((out / "serve.summary.json").read_text())
    assert summary["layout"] == {"tp": 2, "pp": 1, "dp": 1} and summary["cancelled"] == 1


def test_stopping_the_launcher_stops_every_rank(tiny_sft: Path, tmp_path: Path) -> None:
    out = tmp_path / "served"
    log = tmp_path / "served.log"
    args = [sys.executable, "-m", "nemo_steerlm.cli", "serve", f"model={tiny_sft / 'sft.nemo'}", "port=0"]
    with open(log, "w", encoding="utf-8") as sink:
        proc = subprocess.Popen([*args, f"output_dir={out}", *TP2], stdout=sink, stderr=subprocess.STDOUT)
    ranks: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 600
        while not (found := LISTENING.search(log.read_text(encoding="utf-8"))):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.2)
        ranks = psutil.Process(proc.pid).children(recursive=True)
        assert len(ranks) == 2
        body = {"prompt": "Hello", "max_tokens": 3, "temperature": 0}
        assert httpx.post(f"{found.group(1)}/v1/completions", json=body, timeout=120).status_code == 200
        proc.send_signal(signal.SIGTERM)  # what SLURM or a supervisor does: torchrun passes it to every rank
        proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, alive = psutil.wait_procs(ranks, timeout=30)
    assert not alive
    # rank 0 shut down cleanly (its summary), rank 1 when rank 0 told it
    assert json.loads((out / "serve.summary.json").read_text())["admitted"] == 1
