"""The real `nemo-steerlm annotate` CLI with a tiny trained attribute model on the shipped sample.

Checks the labels against the model's own predictions (restored in a fresh process, clipped and rounded half to
even by numpy), the byte format and order, resumption after a real SIGKILL, DP=2 = DP=1, shards + merge, and the
errors (wrong model kind, broken data line).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from steerlm_test_helpers.cli import ok, restore_predict, steerlm

from nemo_steerlm.attributes import HELPSTEER_ATTRIBUTES, OASST_ATTRIBUTES, AttributeSchema
from nemo_steerlm.data.template import Conversation, Turn
from nemo_steerlm.inference.annotation import assistant_turn_texts

pytestmark = pytest.mark.integration


def _annotate(apm: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return steerlm("annotate", f"model={apm / 'apm.nemo'}", f"data={data}", f"output_dir={out}", *extra)


@pytest.fixture(scope="module")
def val_run(tiny_apm: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("annotate") / "val"
    ok(_annotate(tiny_apm, tiny_apm / "data" / "sft" / "val.jsonl", out, "chunk_size=2"))
    return out


def test_labels_are_the_models_rounded_predictions(tiny_apm: Path, val_run: Path, tmp_path: Path) -> None:
    src = (tiny_apm / "data" / "sft" / "val.jsonl").read_text(encoding="utf-8").splitlines()
    out_bytes = (val_run / "val.annotated.jsonl").read_bytes()
    assert out_bytes.endswith(b"\n")
    lines = out_bytes.decode("utf-8").splitlines()
    assert len(lines) == len(src) == 43
    preds = restore_predict(tiny_apm / "apm.nemo", tiny_apm / "data" / "regression" / "val.jsonl", tmp_path / "p.npy")
    expected = np.round(np.clip(preds, 0, 4)).astype(int)  # numpy rounds half to even
    for i, (line, original) in enumerate(zip(lines, src, strict=True)):
        obj, before = json.loads(line), json.loads(original)
        assert json.dumps(obj, ensure_ascii=False) == line  # the reference byte format
        assert list(obj) == ["conversations", "system", "mask", "type"]
        assert [(t["value"], t["from"]) for t in obj["conversations"]] == [
            (t["value"], t["from"]) for t in before["conversations"]
        ]  # same conversations, same order
        user, assistant = obj["conversations"]
        assert user["label"] is None
        pairs = [p.split(":") for p in assistant["label"].split(",")]
        # trained on HelpSteer alone: the four OpenAssistant outputs never met a label and are not written
        assert [n for n, _ in pairs] == list(HELPSTEER_ATTRIBUTES)
        assert [int(v) for _, v in pairs] == expected[i][len(OASST_ATTRIBUTES) :].tolist()
    summary = json.loads((val_run / "annotate.summary.json").read_text())
    assert summary["rows"] == 43 and summary["assistant_turns"] == 43 and summary["chunks"] == 22
    assert 0 < summary["truncated_turns"] < 43  # long HelpSteer prompts are cut from the left, and counted
    assert not (val_run / ".annotate_state").exists()


def test_every_assistant_turn_of_a_multi_turn_conversation_gets_its_prefix() -> None:
    conv = Conversation(
        [Turn("Hi", "User"), Turn("Hello", "Assistant", None), Turn("More?", "User"), Turn("Yes.", "Assistant", "")],
        system="S",
    )
    texts = assistant_turn_texts(conv, AttributeSchema())
    head = "<extra_id_0>System\nS\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\nHello\n"
    assert texts == [
        (1, head + "<extra_id_2>"),
        (3, head + "<extra_id_1>User\nMore?\n<extra_id_1>Assistant\nYes.\n<extra_id_2>"),
    ]


def test_killed_run_resumes_to_identical_bytes(tiny_apm: Path, val_run: Path, tmp_path: Path) -> None:
    data, out = tiny_apm / "data" / "sft" / "val.jsonl", tmp_path / "killed"
    args = ["annotate", f"model={tiny_apm / 'apm.nemo'}", f"data={data}", f"output_dir={out}", "chunk_size=2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nemo_steerlm.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = out / ".annotate_state"
    deadline = time.time() + 300
    # a chunk is committed once its record (chunk_*.json, written after the chunk) exists
    while len(list(state.glob("chunk_*.json"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    committed = sorted(p.with_suffix(".jsonl") for p in state.glob("chunk_*.json"))
    assert 3 <= len(committed) < 22 and not (out / "val.annotated.jsonl").exists()
    # a damaged chunk (its last line cut off, as a full disk or an edit would leave it) must not be reused
    lines = committed[1].read_bytes().splitlines(keepends=True)
    committed[1].write_bytes(b"".join(lines[:-1]) + lines[-1][:10])
    res = ok(steerlm(*args))
    assert f"{committed[1].name} does not match its record" in res.stdout
    summary = json.loads((out / "annotate.summary.json").read_text())
    assert summary["chunks_resumed"] >= len(committed) - 1 and summary["rows"] == 43
    assert (out / "val.annotated.jsonl").read_bytes() == (val_run / "val.annotated.jsonl").read_bytes()


def test_two_data_parallel_processes_equal_one(tiny_apm: Path, val_run: Path, tmp_path: Path) -> None:
    data = tiny_apm / "data" / "sft" / "val.jsonl"
    ok(_annotate(tiny_apm, data, tmp_path / "dp2", "trainer.devices=2"))
    summary = json.loads((tmp_path / "dp2" / "annotate.summary.json").read_text())
    assert summary["layout"]["dp"] == 2
    assert (tmp_path / "dp2" / "val.annotated.jsonl").read_bytes() == (val_run / "val.annotated.jsonl").read_bytes()


def test_shards_then_merge_equal_one_run(tiny_apm: Path, val_run: Path, tmp_path: Path) -> None:
    data, out = tiny_apm / "data" / "sft" / "val.jsonl", tmp_path / "sharded"
    res = _annotate(tiny_apm, data, out, "num_shards=3", "merge_shards=true")
    assert res.returncode == 2 and "shard 0 of 3 is missing" in res.stderr
    for k in range(3):
        ok(_annotate(tiny_apm, data, out, "num_shards=3", f"shard_index={k}", "progress=false"))
    rows = [len((out / "shards" / f"shard_{k:05d}.jsonl").read_text().splitlines()) for k in range(3)]
    assert rows == [14, 14, 15]
    ok(_annotate(tiny_apm, data, out, "num_shards=3", "merge_shards=true"))
    assert (out / "val.annotated.jsonl").read_bytes() == (val_run / "val.annotated.jsonl").read_bytes()


def test_wrong_model_kind_exits_2(tiny_sft: Path, tiny_apm: Path, tmp_path: Path) -> None:
    res = steerlm(
        "annotate", f"model={tiny_sft / 'sft.nemo'}", f"data={tiny_apm / 'data' / 'sft' / 'val.jsonl'}",
        f"output_dir={tmp_path / 'o'}",
    )  # fmt: skip
    assert res.returncode == 2
    assert "is a SteerLM SFT model (train-sft), but this stage needs a attribute prediction model" in res.stderr
    assert not (tmp_path / "o").exists()


def test_broken_data_line_exits_2_and_writes_nothing(tiny_apm: Path, tmp_path: Path) -> None:
    lines = (tiny_apm / "data" / "sft" / "val.jsonl").read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[4])
    bad["conversations"][1]["from"] = "Robot"
    lines[4] = json.dumps(bad)
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = _annotate(tiny_apm, data, tmp_path / "o")
    assert res.returncode == 2
    assert f"{data}:5: field 'conversations[1].from'" in res.stderr
    assert not (tmp_path / "o").exists()


def test_progress_moves_within_a_chunk_and_counts_every_conversation_once(tiny_apm: Path, tmp_path: Path) -> None:
    from nemo_steerlm.data.formats import read_sft_jsonl
    from nemo_steerlm.inference.annotation import job_identity, run_chunks
    from nemo_steerlm.models.checkpoint import restore_nemo

    model = restore_nemo(tiny_apm / "apm.nemo", "apm")
    data = tiny_apm / "data" / "sft" / "val.jsonl"
    convs = read_sft_jsonl(data, model.schema)
    identity = job_identity(tiny_apm / "apm.nemo", data, 32, (0, 1))
    calls: list[int] = []
    paths, _ = run_chunks(model, convs, tmp_path / "state", identity, 32, batch_size=4, progress=calls.append)
    # 43 conversations: a chunk of 32 then one of 11; batches of 4 turns move the bar inside each chunk
    assert len(paths) == 2 and sum(calls) == len(convs) == 43
    assert len(calls) > 4 and all(c > 0 for c in calls)
    done = [sum(calls[: i + 1]) for i in range(len(calls))]
    assert 32 in done and all(d < 32 for d in done[: done.index(32)])  # never past the chunk before it is committed
    resumed: list[int] = []
    run_chunks(model, convs, tmp_path / "state", identity, 32, batch_size=4, progress=resumed.append)
    assert resumed == [32, 11]  # committed chunks count whole
