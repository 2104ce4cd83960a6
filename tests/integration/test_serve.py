"""The real `nemo-steerlm serve` with a tiny trained SFT model, called with the real `openai` client and plain HTTP.

One server process for the module (port 0: the kernel picks a free port). Greedy answers are compared with what the
real `generate` CLI writes for the same conversations, labels and token budget; concurrent answers with the
one-at-a-time answers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from steerlm_test_helpers.cli import ok, steerlm
from steerlm_test_helpers.serve import serve

pytestmark = pytest.mark.integration
NEW = 12
MAX_PENDING = 20
DEFAULT = "helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4"  # the model saw the HelpSteer five


@pytest.fixture(scope="module")
def server(tiny_sft: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("serve") / "sft_server"
    overrides = [f"max_pending={MAX_PENDING}", "max_batch=16", "batch_wait_ms=20", "default_max_tokens=8"]
    with serve(tiny_sft / "sft.nemo", out, *overrides) as url:
        yield url
    summary = json.loads((out / "serve.summary.json").read_text())
    assert summary["kind"] == "sft" and summary["admitted"] > 0


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def _messages(conv: dict) -> list[dict]:
    """An SFT JSONL conversation (its trailing assistant turn dropped) as chat messages; earlier answers keep their
    labels (a message's `label`), as generate renders them."""
    turns = conv["conversations"]
    turns = turns[:-1] if turns[-1]["from"] == "Assistant" else turns
    messages = [{"role": "system", "content": conv["system"]}]
    for t in turns:
        role = "user" if t["from"] == "User" else "assistant"
        messages.append({"role": role, "content": t["value"], **({"label": t["label"]} if t["label"] else {})})
    return messages


def _prompt_file(tiny_sft: Path, path: Path) -> list[dict]:
    """Prompt lines for `generate`: three validation conversations, a two-turn one, a plain prompt with a system."""
    rows = [json.loads(x) for x in (tiny_sft / "data" / "sft" / "val.jsonl").read_text().splitlines()[:3]]
    first = rows[0]["conversations"]
    two_turns = dict(rows[1])
    two_turns["conversations"] = [*first[:2], {"value": "And shorter, please?", "from": "User", "label": None}]
    lines = [*rows, two_turns, {"prompt": "Name three rivers in Europe.", "system": "Answer in one line."}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return lines


def _chat_body(line: dict) -> dict:
    if "prompt" in line:
        return {
            "messages": [{"role": "system", "content": line["system"]}, {"role": "user", "content": line["prompt"]}]
        }
    return {"messages": _messages(line)}


def test_greedy_chat_equals_generate_cli(server: str, tiny_sft: Path, tmp_path: Path) -> None:
    steer = {"verbosity": 0, "complexity": 2}  # (the default label: test_openai_client_chat_stream_and_models)
    lines = _prompt_file(tiny_sft, tmp_path / "prompts.jsonl")
    args = [f"model={tiny_sft / 'sft.nemo'}", f"data={tmp_path / 'prompts.jsonl'}", f"output_dir={tmp_path / 'gen'}"]
    args += [f"sampling.max_new_tokens={NEW}", "sampling.greedy=true", *[f"steer.{k}={v}" for k, v in steer.items()]]
    ok(steerlm("generate", *args))
    expected = [json.loads(x) for x in (tmp_path / "gen" / "generations.jsonl").read_text().splitlines()]
    assert len({e["response"] for e in expected}) > 1, "the prompts should get different answers"
    for line, want in zip(lines, expected, strict=True):
        body = {**_chat_body(line), "max_tokens": NEW, "temperature": 0, **({"steer": steer} if steer else {})}
        got = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120).json()
        assert got["steer_label"] == want["label"]
        assert got["choices"][0]["message"]["content"] == want["response"]
        assert got["usage"]["prompt_tokens"] == want["prompt_tokens"]
        assert got["prompt_truncated"] == [want["prompt_truncated"]]
        assert got["usage"]["completion_tokens"] == len(want["response_token_ids"])
        if "prompt" in line:  # a completion of the same prompt is the same answer
            body = {**line, "max_tokens": NEW, "temperature": 0, **({"steer": steer} if steer else {})}
            done = httpx.post(f"{server}/v1/completions", json=body, timeout=120).json()
            assert done["choices"][0]["text"] == want["response"]


def test_openai_client_chat_stream_and_models(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["sft"] and models[0].default_label == DEFAULT
    messages = [{"role": "user", "content": "Give me a recipe for pancakes."}]
    full = client.chat.completions.create(model="sft", messages=messages, max_tokens=NEW, temperature=0)
    assert full.object == "chat.completion" and full.choices[0].message.role == "assistant"
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    assert full.steer_label == DEFAULT  # extra fields come through as attributes
    stream = client.chat.completions.create(
        model="sft",
        messages=messages,
        max_tokens=NEW,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    steered = client.chat.completions.create(
        model="sft", messages=messages, max_tokens=4, temperature=0, extra_body={"steer": {"verbosity": 1}}
    )
    assert steered.steer_label == DEFAULT.replace("verbosity:4", "verbosity:1")
    label = "helpfulness:2,verbosity:0"
    whole = client.chat.completions.create(model="sft", messages=messages, max_tokens=4, extra_body={"label": label})
    assert whole.steer_label == label


def test_raw_stream_ends_with_done(server: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as res:
        assert res.headers["content-type"].startswith("text/event-stream")
        events = [line for line in res.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


def test_sampling_n_seed_and_stop(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me a story about a dog."}]
    kw = {"model": "sft", "messages": messages, "max_tokens": NEW, "temperature": 1.0, "top_p": 0.9}
    first = client.chat.completions.create(n=3, seed=11, **kw)
    again = client.chat.completions.create(n=3, seed=11, **kw)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    greedy = client.chat.completions.create(model="sft", messages=messages, max_tokens=NEW, temperature=0)
    text = greedy.choices[0].message.content
    assert len(text) > 4
    stop = text[2:4]
    cut = client.chat.completions.create(model="sft", messages=messages, max_tokens=NEW, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"steer": {"humour": 2}}, 400, "steer.humour"),
        ({"steer": {"verbosity": 7}}, 400, "steer.verbosity"),
        ({"steer": {"verbosity": 1.5}}, 400, "steer.verbosity"),
        ({"label": "verbosity:9"}, 400, "label"),
        ({"label": "helpfulness:4", "steer": {"verbosity": 1}}, 400, "label"),
        ({"temperature": -1}, 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 500}, 400, "max_tokens"),  # leaves no room for the prompt in the 512-token model
        ({"n": 0}, 400, "n"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, 400, "messages[1].role"),
        ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
        ({"model": "gpt-4"}, 404, "model"),
    ],
)
def test_bad_requests_get_openai_error_bodies(server: str, body: dict, status: int, param: str) -> None:
    request = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, **body}
    res = httpx.post(f"{server}/v1/chat/completions", json=request, timeout=60)
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_a_stream_whose_budget_leaves_no_room_is_refused_before_it_starts(server: str, client: openai.OpenAI) -> None:
    # only the runner knows the prompt's length: the stream waits for its verdict before answering 200
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 500, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as res:
        res.read()
    assert res.status_code == 400 and res.headers["content-type"].startswith("application/json"), res.text
    assert res.json()["error"]["param"] == "max_tokens" and "data:" not in res.text
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="sft", prompt="Hello", max_tokens=500, stream=True)
    assert err.value.body["param"] == "max_tokens"
    ok_body = {**body, "max_tokens": 3}  # the same request with room streams as before
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=ok_body, timeout=60) as res:
        events = [line for line in res.iter_lines() if line]
    assert res.status_code == 200 and events[-1] == "data: [DONE]"


def test_openai_client_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"steer": {"toxicity": 1}})  # fmt: skip
    assert err.value.body["param"] == "steer.toxicity"  # the model was trained on HelpSteer labels only


def test_sixteen_concurrent_clients_get_the_one_at_a_time_answers(server: str, client: openai.OpenAI) -> None:
    questions = [f"Question {i}: what is {i} times {i + 3}?" for i in range(16)]

    def ask(q: str) -> str:
        res = client.chat.completions.create(model="sft", messages=[{"role": "user", "content": q}],
                                             max_tokens=NEW, temperature=0)  # fmt: skip
        return res.choices[0].message.content

    alone = [ask(q) for q in questions]
    before = httpx.get(f"{server}/health").json()
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, questions))
    after = httpx.get(f"{server}/health").json()
    assert together == alone
    assert after["admitted"] - before["admitted"] == 16
    assert after["batches"] - before["batches"] < 16, "concurrent requests should share batches"
    assert after["largest_batch"] > 1


def test_full_queue_answers_503_and_recovers(server: str) -> None:
    body = {"messages": [{"role": "user", "content": "Write a long essay."}], "max_tokens": 300, "temperature": 0}
    barrier = threading.Barrier(3 * MAX_PENDING)

    def post(_: int) -> httpx.Response:
        barrier.wait()
        return httpx.post(f"{server}/v1/chat/completions", json=body, timeout=300)

    before = httpx.get(f"{server}/health").json()
    with ThreadPoolExecutor(3 * MAX_PENDING) as pool:
        results = list(pool.map(post, range(3 * MAX_PENDING)))
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and MAX_PENDING >= codes.count(200) > 0
    busy = next(r for r in results if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "server_overloaded"
    after = httpx.get(f"{server}/health").json()
    assert after["rejected"] - before["rejected"] == codes.count(503) and after["pending"] == 0
    assert httpx.post(f"{server}/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=60).status_code == 200


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_client_that_goes_away_frees_its_slot_and_stops_its_rows(server: str) -> None:
    body = {"messages": [{"role": "user", "content": "Write a long essay."}], "max_tokens": 400, "temperature": 0}
    before = httpx.get(f"{server}/health").json()
    with httpx.stream("POST", f"{server}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as res:
        lines = res.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk
        assert next(x for x in lines if x).startswith("data: ")  # a first token: it is generating
    # the connection is closed: the slot is free at once and the row stops long before 400 tokens
    _wait_for(lambda: httpx.get(f"{server}/health").json()["cancelled"] == before["cancelled"] + 1)
    _wait_for(lambda: httpx.get(f"{server}/health").json()["pending"] == 0)
    _wait_for(lambda: httpx.get(f"{server}/health").json()["batches"] == before["batches"] + 1)
    after = httpx.get(f"{server}/health").json()
    assert after["generated_tokens"] - before["generated_tokens"] < 400
    # a non-streaming client that gives up is cancelled as well
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/chat/completions", json=body, timeout=1.0)
    _wait_for(lambda: httpx.get(f"{server}/health").json()["cancelled"] == before["cancelled"] + 2)


def test_bad_settings_stop_with_one_line(tiny_sft: Path, tmp_path: Path) -> None:
    res = steerlm("serve", f"model={tmp_path / 'none.nemo'}", f"output_dir={tmp_path / 'a'}", "port=0")
    assert res.returncode == 2 and "model=" in res.stderr.strip().splitlines()[-1]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        res = steerlm("serve", f"model={tiny_sft / 'sft.nemo'}", f"output_dir={tmp_path / 'b'}", f"port={port}")
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and f"port={port}: cannot listen there" in last, res.stderr[-2000:]
    res = steerlm("serve", f"model={tiny_sft / 'sft.nemo'}", f"output_dir={tmp_path / 'c'}", "steer.humor=1")
    assert res.returncode == 2 and "steer.humor=1" in res.stderr.strip().splitlines()[-1]
    # one copy of the model over all processes: TP x PP must use every device (no data-parallel replicas)
    res = steerlm(
        "serve", f"model={tiny_sft / 'sft.nemo'}", f"output_dir={tmp_path / 'd'}", "layout.tensor_model_parallel_size=2"
    )
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "trainer.devices x trainer.num_nodes (1) must equal" in last, res.stderr[-2000:]
