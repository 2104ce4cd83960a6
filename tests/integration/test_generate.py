"""The real `nemo-steerlm generate` CLI and the generation library with a tiny trained SFT model.

The KV-cache batched generation is compared with an independent loop: one prompt at a time, the plain model forward
over the whole sequence every step, argmax over the tokenizer's vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from steerlm_test_helpers.cli import ok, steerlm

from nemo_steerlm import resources
from nemo_steerlm.attributes import TURN_MARKER
from nemo_steerlm.data.formats import read_sft_jsonl
from nemo_steerlm.data.template import render_prompt
from nemo_steerlm.models.checkpoint import restore_nemo
from nemo_steerlm.models.generation import (
    SamplingParams,
    generate,
    generate_full,
    generate_ids,
    prompt_conversation,
)

pytestmark = pytest.mark.integration
NEW = 16
MT_BENCH = Path(resources.__file__).resolve().parent / "eval" / "mt_bench" / "question.jsonl"


@pytest.fixture
def sft_model(tiny_sft: Path):
    # per test: the shared conftest tears the process groups down after each test
    return restore_nemo(tiny_sft / "sft.nemo", "sft")


@pytest.fixture
def conversations(tiny_sft: Path, sft_model):
    convs = read_sft_jsonl(tiny_sft / "data" / "sft" / "val.jsonl", sft_model.schema)
    return [prompt_conversation(c)[0] for c in convs[::9]]


def _recompute_greedy(model, prompt_ids: list[int], steps: int) -> list[int]:
    ids = list(prompt_ids)
    vocab = len(model.tokenizer)
    with torch.no_grad():
        for _ in range(steps):
            tokens = torch.tensor([ids])
            logits = model.model(tokens, torch.arange(len(ids)).unsqueeze(0), None)
            ids.append(int(logits[0, -1, :vocab].argmax()))
    return ids[len(prompt_ids) :]


def _prompt_ids(model, conv, label: str) -> list[int]:
    return model.tokenizer(render_prompt(conv, label), add_special_tokens=False)["input_ids"]


def test_kv_cache_batch_equals_unbatched_full_recomputation(sft_model, conversations) -> None:
    params = SamplingParams(max_new_tokens=NEW, greedy=True, stop_text="", batch_size=len(conversations))
    full = [_prompt_ids(sft_model, conv, "verbosity:1") for conv in conversations]
    limit = 512 - NEW  # a budget above the prompt policy's, so that long and short prompts share one batch
    got = generate_ids(sft_model, full, params, max_prompt_tokens=limit)
    lengths = {len(g.prompt_ids) for g in got}
    assert len(lengths) >= 3, "the batch should mix prompt lengths"
    truncated = 0
    for ids, g in zip(full, got, strict=True):
        assert g.prompt_ids == ids[-limit:] and g.prompt_truncated == (len(ids) > limit)
        truncated += g.prompt_truncated
        assert g.token_ids == _recompute_greedy(sft_model, g.prompt_ids, NEW)
    assert 0 < truncated < len(got)


def test_generation_reads_the_context_training_kept(sft_model, conversations) -> None:
    # train-sft kept model.max_context_tokens (64 for the tiny preset) before each response: so does generation
    assert sft_model.prompt_policy.max_context_tokens == 64
    got = generate_full(sft_model, conversations, "verbosity:1", SamplingParams(max_new_tokens=NEW, greedy=True))
    for conv, g in zip(conversations, got, strict=True):
        full = _prompt_ids(sft_model, conv, "verbosity:1")
        assert g.prompt_ids == full[-64:] and g.prompt_truncated == (len(full) > 64)
    assert any(g.prompt_truncated for g in got)


def test_stop_text_cuts_the_response(sft_model, conversations) -> None:
    free = generate_full(sft_model, conversations[:1], None, SamplingParams(max_new_tokens=NEW, greedy=True))[0]
    decoded = sft_model.tokenizer.decode(free.token_ids, skip_special_tokens=False)
    stop = sft_model.tokenizer.decode(free.token_ids[4:6], skip_special_tokens=False)
    params = SamplingParams(max_new_tokens=NEW, greedy=True, stop_text=stop)
    cut = generate_full(sft_model, conversations[:1], None, params)[0]
    assert cut.stop_reason == "stop_text" and len(cut.token_ids) <= 6
    assert cut.text == decoded[: decoded.find(stop)] and stop not in cut.text
    assert generate(sft_model, conversations[:1], None, params) == [cut.text]


def test_sampling_is_seeded(sft_model, conversations) -> None:
    params = SamplingParams(max_new_tokens=8, temperature=0.8, top_k=50, top_p=0.9, seed=7)
    first = generate(sft_model, conversations[:3], None, params)
    assert first == generate(sft_model, conversations[:3], None, params)


def test_cli_generates_steered_lines(tiny_sft: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    ok(
        steerlm(
            "generate",
            f"model={tiny_sft / 'sft.nemo'}",
            f"data={tiny_sft / 'data' / 'sft' / 'val.jsonl'}",
            f"output_dir={out}",
            "limit=5",
            f"sampling.max_new_tokens={NEW}",
            "steer.verbosity=0",
            "steer.complexity=2",
        )  # fmt: skip
    )
    lines = (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    src = (tiny_sft / "data" / "sft" / "val.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    # trained on HelpSteer's human labels: the default label holds the five attributes the model saw, in schema order
    label = "helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:0"
    assert len(lines) == 5
    for i, (line, original) in enumerate(zip(lines, src, strict=True)):
        obj, conv = json.loads(line), json.loads(original)["conversations"]
        assert obj["index"] == i and obj["label"] == label
        assert obj["prompt"] == conv[0]["value"] and obj["reference"] == conv[1]["value"]
        assert TURN_MARKER not in obj["response"]
        assert obj["stop_reason"] in ("stop_text", "eos", "max_new_tokens")
        assert 1 <= len(obj["response_token_ids"]) <= NEW


def test_cli_reads_mt_bench_questions(tiny_sft: Path, tmp_path: Path) -> None:
    out = tmp_path / "mt"
    ok(
        steerlm(
            "generate",
            f"model={tiny_sft / 'sft.nemo'}",
            f"data={MT_BENCH}",
            f"output_dir={out}",
            "limit=2",
            "sampling.max_new_tokens=4",
            "sampling.greedy=true",
            "layout.tensor_model_parallel_size=1",
        )  # fmt: skip
    )
    questions = [json.loads(x) for x in Path(MT_BENCH).read_text().splitlines()[:2]]
    got = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert [g["id"] for g in got] == [str(q["question_id"]) for q in questions]
    assert [g["prompt"] for g in got] == [q["turns"][0] for q in questions]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steer.sarcasm=1", "steer.sarcasm=1: unknown attribute 'sarcasm'"),
        ("steer.verbosity=7", "steer.verbosity=7: attribute 'verbosity': value 7 is out of range [0, 4]"),
        # in the schema but never in the training labels: steering on it would be out of distribution
        ("steer.humor=2", "steer.humor=2: unknown attribute 'humor'; known: helpfulness, correctness, coherence,"),
    ],
)
def test_bad_steering_exits_2(tiny_sft: Path, tmp_path: Path, override: str, message: str) -> None:
    res = steerlm(
        "generate", f"model={tiny_sft / 'sft.nemo'}", f"data={tiny_sft / 'data' / 'sft' / 'val.jsonl'}",
        f"output_dir={tmp_path / 'o'}", override,
    )  # fmt: skip
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "o").exists()


def test_attribute_model_given_to_generate_exits_2(tiny_apm: Path, tmp_path: Path) -> None:
    res = steerlm(
        "generate", f"model={tiny_apm / 'apm.nemo'}", f"data={tiny_apm / 'data' / 'sft' / 'val.jsonl'}",
        f"output_dir={tmp_path / 'o'}",
    )  # fmt: skip
    assert res.returncode == 2
    assert "is a attribute prediction model (train-apm), but this stage needs a SteerLM SFT model" in res.stderr


def test_batched_scoring_equals_an_unpadded_log_softmax_per_sample(sft_model, conversations) -> None:
    # mixed lengths in one forward pass: right-padding must not change any sequence's summed NLL
    prompts = [render_prompt(c, "verbosity:1") for c in conversations[:5]]
    answers = [" The answer is short.", " Yes", " A longer continuation with several more tokens in it.", "!", " no"]
    got = sft_model.score_continuations(prompts, answers)
    for prompt, answer, value in zip(prompts, answers, got, strict=True):
        enc = sft_model.tokenizer(prompt + answer, add_special_tokens=False, return_offsets_mapping=True)
        scored = [start >= len(prompt) for start, _ in enc["offset_mapping"]]
        first = scored.index(True)  # the context keeps the 64 tokens before the answer, as in training
        ids, scored = list(enc["input_ids"])[max(first - 64, 0) :], scored[max(first - 64, 0) :]
        with torch.no_grad():
            logits = sft_model.model(torch.tensor([ids[:-1]]), torch.arange(len(ids) - 1).unsqueeze(0), None)
        logp = torch.log_softmax(logits[0].double(), dim=-1)
        expected = sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if scored[t])
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_cli_label_from_data_answers_each_line_under_its_own_label(tiny_sft: Path, sft_model, tmp_path: Path) -> None:
    out, data = tmp_path / "own", tiny_sft / "data" / "sft" / "val.jsonl"
    args = [f"model={tiny_sft / 'sft.nemo'}", f"data={data}", f"output_dir={out}", "limit=6", "label=from_data"]
    ok(steerlm("generate", *args, f"sampling.max_new_tokens={NEW}", "sampling.greedy=true"))
    got = [json.loads(x) for x in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    src = [json.loads(x)["conversations"] for x in data.read_text(encoding="utf-8").splitlines()[:6]]
    assert [g["label"] for g in got] == [conv[-1]["label"] for conv in src]
    assert len({g["label"] for g in got}) > 1  # the labels differ line by line
    # the CLI's prompt is what training kept of the same conversation: the ids before its first trained token
    trained = sft_model.sft_dataset(str(data)).samples[:6]
    assert [g["prompt_tokens"] for g in got] == [s.loss_mask.index(True) for s in trained]
    assert json.loads((out / "generate.summary.json").read_text())["label"] == "from_data"


def test_cli_label_from_data_needs_labelled_conversations(tiny_sft: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a river."}\n', encoding="utf-8")
    res = steerlm(
        "generate", f"model={tiny_sft / 'sft.nemo'}", f"data={prompts}", f"output_dir={tmp_path / 'o'}",
        "label=from_data",
    )  # fmt: skip
    assert res.returncode == 2 and f"{prompts}:1: label=from_data needs a conversation" in res.stderr
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_budget_that_leaves_no_room_for_the_label(tiny_sft: Path, tmp_path: Path) -> None:
    res = steerlm(
        "generate", f"model={tiny_sft / 'sft.nemo'}", f"data={tiny_sft / 'data' / 'sft' / 'val.jsonl'}",
        f"output_dir={tmp_path / 'o'}", "sampling.max_new_tokens=500", "limit=2",
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "sampling.max_new_tokens=500 leaves 12 prompt tokens (model seq_length=512" in res.stderr
    assert not (tmp_path / "o").exists()
