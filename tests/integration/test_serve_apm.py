"""The real `nemo-steerlm serve` with a tiny trained attribute model: `/v1/attributes` against the `annotate` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from steerlm_test_helpers.cli import ok, steerlm
from steerlm_test_helpers.serve import serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tiny_apm: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("serve_apm") / "apm_server"
    with serve(tiny_apm / "apm.nemo", out, "max_batch=8", "model_name=judge") as url:
        yield url


@pytest.fixture(scope="module")
def annotated(tiny_apm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six validation conversations (six.jsonl) and what the real `annotate` CLI writes for them (local/)."""
    folder = tmp_path_factory.mktemp("annotated")
    rows = (tiny_apm / "data" / "sft" / "val.jsonl").read_text(encoding="utf-8").splitlines()[:6]
    (folder / "six.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ok(
        steerlm(
            "annotate",
            f"model={tiny_apm / 'apm.nemo'}",
            f"data={folder / 'six.jsonl'}",
            f"output_dir={folder / 'local'}",
        )
    )
    return folder


def _messages(conv: dict) -> list[dict]:
    out = [{"role": "system", "content": conv["system"]}]
    return out + [{"role": "user" if t["from"] == "User" else "assistant", "content": t["value"]}
                  for t in conv["conversations"]]  # fmt: skip


def test_scores_are_the_labels_annotate_writes(server: str, annotated: Path) -> None:
    convs = [json.loads(x) for x in (annotated / "six.jsonl").read_text().splitlines()]
    written = [json.loads(x) for x in (annotated / "local" / "six.annotated.jsonl").read_text().splitlines()]
    res = httpx.post(f"{server}/v1/attributes", json={"model": "judge", "conversations": [_messages(c) for c in convs]},
                     timeout=120)  # fmt: skip
    assert res.status_code == 200, res.text
    got = res.json()
    assert got["model"] == "judge" and [d["index"] for d in got["data"]] == list(range(6))
    for item, want in zip(got["data"], written, strict=True):
        turns = [(i, t["label"]) for i, t in enumerate(want["conversations"]) if t["from"] == "Assistant"]
        assert [(t["turn"], t["label"]) for t in item["turns"]] == turns
        for t in item["turns"]:
            raw = np.array(list(t["attributes"].values()))
            assert list(t["scores"].values()) == np.round(np.clip(raw, 0, 4)).astype(int).tolist()
            assert t["label"] == ",".join(f"{k}:{v}" for k, v in t["scores"].items())
    # one conversation as `messages` gives the same scores as in a batch with others
    alone = httpx.post(f"{server}/v1/attributes", json={"messages": _messages(convs[2])}, timeout=120).json()
    assert alone["data"][0]["turns"][0]["scores"] == got["data"][2]["turns"][0]["scores"]
    np.testing.assert_allclose(
        list(alone["data"][0]["turns"][0]["attributes"].values()),
        list(got["data"][2]["turns"][0]["attributes"].values()),
        atol=1e-5,
    )


def test_annotate_with_scorer_url_writes_what_the_loaded_model_writes(server: str, annotated: Path, tmp_path: Path):
    data = annotated / "six.jsonl"
    ok(steerlm("annotate", f"scorer_url={server}", f"data={data}", f"output_dir={tmp_path / 'remote'}", "chunk_size=4",
               "batch_size=3"))  # fmt: skip
    local = (annotated / "local" / "six.annotated.jsonl").read_bytes()
    assert (tmp_path / "remote" / "six.annotated.jsonl").read_bytes() == local
    summary = json.loads((tmp_path / "remote" / "annotate.summary.json").read_text())
    assert summary["layout"] == {"scorer_url": server, "model": "judge"} and summary["chunks"] == 2
    res = steerlm("annotate", "scorer_url=http://127.0.0.1:9", f"data={data}", f"output_dir={tmp_path / 'x'}")
    assert res.returncode == 2 and "scorer_url=http://127.0.0.1:9" in res.stderr.strip().splitlines()[-1]


def test_evaluate_with_scorer_url_writes_what_the_loaded_model_writes(server: str, tiny_apm: Path, tmp_path: Path):
    data = tiny_apm / "data"
    ok(steerlm("evaluate", f"apm={tiny_apm / 'apm.nemo'}", f"data={data}", f"output_dir={tmp_path / 'local'}"))
    ok(steerlm("evaluate", f"scorer_url={server}", f"data={data}", f"output_dir={tmp_path / 'remote'}"))
    for name in ("apm_predictions.jsonl", "apm_metrics.json"):  # the predictions to 6 decimals, the metrics in full
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    local, remote = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("local", "remote"))
    assert remote["apm"] == local["apm"] and remote["inputs"]["scorer_url"] == server
    args = [f"scorer_url={server}", f"apm={tiny_apm / 'apm.nemo'}", f"data={data}", f"output_dir={tmp_path / 'x'}"]
    res = steerlm("evaluate", *args)
    assert res.returncode == 2 and "give one attribute model, not both" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x").exists()


def test_scoring_server_refuses_generation_and_bad_input(server: str) -> None:
    res = httpx.post(f"{server}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
    assert res.status_code == 404 and res.json()["error"]["code"] == "unsupported_endpoint"
    res = httpx.post(f"{server}/v1/attributes", json={"messages": [{"role": "user", "content": "Hi"}]})
    assert res.status_code == 400 and res.json()["error"]["param"] == "messages"  # no answer to score
    res = httpx.post(f"{server}/v1/attributes", content=b"{not json")
    assert res.status_code == 400 and res.json()["error"]["code"] == "invalid_json"
    models = httpx.get(f"{server}/v1/models").json()["data"]
    assert models[0]["id"] == "judge" and models[0]["kind"] == "apm" and models[0]["default_label"] is None
