"""MT-Bench answering (FastChat model_answer format) and the judge client against a local HTTP server."""

import json
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nemo_steerlm.attributes import ASSISTANT_ROLE, USER_ROLE
from nemo_steerlm.evaluation import mt_bench
from nemo_steerlm.evaluation.mt_bench import (
    SHORTUUID_ALPHABET,
    JudgeRequestError,
    OpenAIChatJudge,
    answer_questions,
    judge_answers,
    load_judge_prompts,
    load_questions,
    load_reference_answers,
    parse_rating,
)

QUESTIONS = [
    {"question_id": 2, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]},
    {"question_id": 1, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]},
]


def test_shipped_data():
    questions = load_questions()
    assert len(questions) == 80
    cats = {}
    for q in questions:
        cats[q["category"]] = cats.get(q["category"], 0) + 1
        assert len(q["turns"]) == 2
    assert sorted(cats.values()) == [10] * 8
    prompts = load_judge_prompts()
    for name in ("single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn"):
        assert prompts[name]["output_format"] == "[[rating]]"
    refs = load_reference_answers()
    need = {q["question_id"] for q in questions if q["category"] in ("math", "reasoning", "coding")}
    assert set(refs) == need and len(need) == 30
    assert len(load_questions(begin=0, end=5)) == 5


def test_answer_file_matches_fastchat_format(tmp_path):
    seen = []

    def generate(conversations):
        seen.append(conversations)
        return [f"answer {len(c)} é" for c in conversations]

    path = tmp_path / "model_answer" / "m.jsonl"
    records = answer_questions(QUESTIONS, generate, "my-model", answer_file=path, seed=3, clock=lambda: 123.5)
    assert len(seen) == 2  # one batched call per turn
    assert seen[0] == [[(USER_ROLE, "What is 2+2?")], [(USER_ROLE, "Write a poem.")]]
    assert seen[1][0] == [(USER_ROLE, "What is 2+2?"), (ASSISTANT_ROLE, "answer 1 é"), (USER_ROLE, "And 3+3?")]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert "\\u00e9" in lines[0]  # json.dumps default ensure_ascii, as FastChat writes it
    parsed = [json.loads(line) for line in lines]
    assert parsed == records
    assert [r["question_id"] for r in parsed] == [1, 2]
    first = parsed[0]
    assert list(first) == ["question_id", "answer_id", "model_id", "choices", "tstamp"]
    assert first["model_id"] == "my-model" and first["tstamp"] == 123.5
    assert first["choices"] == [{"index": 0, "turns": ["answer 1 é", "answer 3 é"]}]
    assert len(first["answer_id"]) == 22 and set(first["answer_id"]) <= set(SHORTUUID_ALPHABET)
    again = answer_questions(QUESTIONS, generate, "my-model", seed=3)
    other = answer_questions(QUESTIONS, generate, "my-model", seed=4)
    assert [r["answer_id"] for r in again] == [r["answer_id"] for r in records]
    assert [r["answer_id"] for r in other] != [r["answer_id"] for r in records]


def test_generate_fn_with_wrong_count_is_an_error():
    with pytest.raises(ValueError, match="responses"):
        answer_questions(QUESTIONS, lambda convs: ["x"], "m")


@pytest.mark.parametrize(
    "text, score",
    [
        ("Good.\nRating: [[7]]", 7.0),
        ("Rating: [[8.5]]", 8.5),
        ("I give it [6].", 6.0),
        ("[3] at first, final [[9]]", 9.0),
        ("no verdict here", -1.0),
        ("Rating: [[ten]]", -1.0),
        ("Rating: [[-4]]", -1.0),
    ],
)
def test_parse_rating(text, score):
    assert parse_rating(text) == score


class _JudgeHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append(body)
        if server.fail_first > 0:
            server.fail_first -= 1
            return self._reply(503, {"error": "busy"})
        problems = server.check(self.path, self.headers, body)
        if problems:
            return self._reply(400, {"error": problems})
        user = body["messages"][-1]["content"]
        verdict = "Looks fine, no rating." if "MALFORMED" in user else f"Fine. Rating: [[{server.score_for(user)}]]"
        return self._reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}}]})


@pytest.fixture()
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
    server.requests, server.fail_first = [], 0
    server.check = lambda path, headers, body: None
    server.score_for = lambda user: 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _answers():
    return [
        {"question_id": 1, "choices": [{"index": 0, "turns": ["It is 4.", "It is 6."]}]},
        {"question_id": 2, "choices": [{"index": 0, "turns": ["Roses are red.", "MALFORMED short"]}]},
    ]


def test_judge_client_against_local_server(judge_server, monkeypatch):
    prompts = load_judge_prompts()
    refs = {1: ["REF four", "REF six"]}

    def check(path, headers, body):
        user = body["messages"][1]["content"]
        system = body["messages"][0]
        if path != "/v1/chat/completions" or headers["Authorization"] != "Bearer sekret":
            return "bad path or key"
        if body["model"] != "judge-x" or body["temperature"] != 0 or system["role"] != "system":
            return "bad model/temperature/system role"
        if system["content"] not in {prompts[n]["system_prompt"] for n in prompts if n.startswith("single")}:
            return "unknown system prompt"
        if "What is 2+2?" in user and "REF four" not in user:
            return "math question without reference"
        if not ("What is 2+2?" in user or "Write a poem." in user):
            return "question missing"
        if not ("It is 4." in user or "Roses are red." in user):
            return "answer missing"
        return None

    judge_server.check = check
    judge_server.score_for = lambda user: 8 if "What is 2+2?" in user else 4
    monkeypatch.setenv("MY_JUDGE_KEY", "sekret")
    base = f"http://127.0.0.1:{judge_server.server_address[1]}/v1/"
    client = OpenAIChatJudge(base, "judge-x", api_key_env="MY_JUDGE_KEY", timeout_s=5, max_retries=0)
    out = judge_answers(QUESTIONS, _answers(), client, "judge-x", prompts, refs)
    assert len(judge_server.requests) == 4
    systems = [r["messages"][0]["content"] for r in judge_server.requests]
    assert systems == [
        prompts["single-math-v1"]["system_prompt"],
        prompts["single-math-v1-multi-turn"]["system_prompt"],
        prompts["single-v1"]["system_prompt"],
        prompts["single-v1-multi-turn"]["system_prompt"],
    ]
    scores = [(j["question_id"], j["turn"], j["score"]) for j in out["judgments"]]
    assert scores == [(1, 1, 8.0), (1, 2, 8.0), (2, 1, 4.0), (2, 2, -1.0)]
    assert out["n_failed"] == 1 and out["failed"] == [{"question_id": 2, "turn": 2}]
    assert out["overall"] == pytest.approx(20 / 3)  # the failed judgment is counted, not averaged
    assert out["per_turn"] == {"1": 6.0, "2": 8.0}
    assert out["per_category"]["writing"] == {"mean": 4.0, "turn_1": 4.0, "turn_2": None, "n_failed": 1}
    assert out["per_category"]["math"]["mean"] == 8.0
    json.dumps(out, allow_nan=False)


def test_judge_client_retries_then_fails(judge_server):
    base = f"http://127.0.0.1:{judge_server.server_address[1]}/v1"
    sleeps = []
    client = OpenAIChatJudge(base, "j", api_key_env=None, timeout_s=5, max_retries=2, sleep=sleeps.append)
    judge_server.fail_first = 2
    assert "[[5]]" in client([{"role": "user", "content": "hi"}])
    assert len(judge_server.requests) == 3 and len(sleeps) == 2
    judge_server.fail_first = 10
    with pytest.raises(JudgeRequestError, match="3 attempts"):
        client([{"role": "user", "content": "hi"}])
    out = judge_answers(QUESTIONS[:1], _answers()[1:], client, "j")
    assert [j["score"] for j in out["judgments"]] == [-1.0, -1.0]
    assert out["n_failed"] == 2 and out["overall"] is None and out["judgments"][0]["error"]


def test_judge_client_client_errors_are_not_retried(judge_server):
    judge_server.check = lambda path, headers, body: "always wrong"
    client = OpenAIChatJudge(f"http://127.0.0.1:{judge_server.server_address[1]}", "j", api_key_env=None)
    with pytest.raises(urllib.error.HTTPError):
        client([{"role": "user", "content": "hi"}])
    assert len(judge_server.requests) == 1


def test_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR"):
        OpenAIChatJudge("http://127.0.0.1:9", "j", api_key_env="NO_SUCH_KEY_VAR")


def test_missing_reference_is_an_error():
    with pytest.raises(ValueError, match="reference"):
        judge_answers(QUESTIONS, _answers(), lambda m: "[[1]]", reference_answers={})


def test_module_reads_packaged_files():
    assert mt_bench.QUESTION_FILE.is_file() and (mt_bench.RESOURCE_DIR / "README.md").read_text().count("Apache")
