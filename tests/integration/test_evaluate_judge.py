"""`nemo-steerlm evaluate` with the optional MT-Bench judge, against an OpenAI-compatible server on localhost.

There is no network here: the judge endpoint is a small HTTP server started by the test; it checks each request
(FastChat's judge system prompt, the question and the model's answer) and replies with a verdict.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from steerlm_test_helpers.cli import ok, steerlm

pytestmark = pytest.mark.integration
SEEN: list[dict] = []


class _Judge(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        SEEN.append(body)
        user = body["messages"][-1]["content"]
        authorised = self.headers.get("Authorization") == "Bearer test-key"
        good = authorised and body["model"] == "judge-x" and ("[Question]" in user or "<|The Start of" in user)
        reply = "The answer is poor. Rating: [[2]]" if good else "malformed request"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200 if good else 400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return


def test_evaluate_with_judge_writes_scores_into_the_report(tiny_sft: Path, tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "eval"
        ok(
            steerlm(
                "evaluate",
                f"model={tiny_sft / 'sft.nemo'}",
                f"output_dir={out}",
                "steerability.enabled=false",
                "truthfulqa.enabled=false",
                "perplexity.enabled=false",
                "generation.max_new_tokens=4",
                "mt_bench.judge.enabled=true",
                f"mt_bench.judge.base_url=http://127.0.0.1:{server.server_port}/v1",
                "mt_bench.judge.model=judge-x",
                "mt_bench.judge.api_key_env=STEERLM_TEST_JUDGE_KEY",
                env={"STEERLM_TEST_JUDGE_KEY": "test-key"},
            )
        )
    finally:
        server.shutdown()
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    judge = results["mt_bench"]["judge"]
    assert len(SEEN) == 160  # 80 questions x 2 turns, each graded once
    assert judge["n_judgments"] == 160 and judge["n_failed"] == 0
    assert judge["overall"] == 2.0 and set(judge["per_turn"].values()) == {2.0}
    assert "[[" not in (out / "report.md").read_text(encoding="utf-8")
    assert "judge" in (out / "report.md").read_text(encoding="utf-8").lower()


def test_judge_enabled_without_url_is_a_clear_error_before_any_work(tiny_sft: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    res = steerlm(
        "evaluate", f"model={tiny_sft / 'sft.nemo'}", f"output_dir={out}", "steerability.enabled=false",
        "mt_bench.judge.enabled=true",
    )  # fmt: skip
    assert res.returncode == 2 and "mt_bench.judge.base_url" in res.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_steerability_without_data_is_a_clear_error(tiny_sft: Path, tmp_path: Path) -> None:
    res = steerlm("evaluate", f"model={tiny_sft / 'sft.nemo'}", f"output_dir={tmp_path / 'e'}")
    assert res.returncode == 2 and "data=PREPARED" in res.stderr.strip().splitlines()[-1]
