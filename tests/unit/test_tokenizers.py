"""The shipped tokenizers load offline; the SFT loss mask covers exactly each response, its newline and the marker."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from nemo_steerlm.attributes import DEFAULT_SCHEMA, MARKERS
from nemo_steerlm.data.sources import helpsteer_to_conversation, load_helpsteer, load_oasst_trees, oasst_threads
from nemo_steerlm.data.template import render_sft, tokenize_rendered
from nemo_steerlm.resources import gpt2_tokenizer_path, helpsteer_sample_path, tiny_tokenizer_path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "data" / "oasst_fixture.trees.jsonl"


@pytest.fixture(scope="module", params=["tiny", "gpt2"])
def tokenizer(request):
    path = tiny_tokenizer_path() if request.param == "tiny" else gpt2_tokenizer_path()
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        yield AutoTokenizer.from_pretrained(str(path))
    finally:
        mp.undo()


def test_tiny_tokenizer_specials() -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_path()))
    assert len(tok) == 4096
    for marker in MARKERS:
        ids = tok(marker, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [marker]
    assert tok.bos_token == tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")


def test_gpt2_tokenizer_is_the_real_one() -> None:
    tok = AutoTokenizer.from_pretrained(str(gpt2_tokenizer_path()))
    assert len(tok) == 50257
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [15496, 995]
    assert tok.eos_token_id == 50256
    # the markers are plain text for GPT-2: several tokens each
    assert len(tok("<extra_id_1>", add_special_tokens=False)["input_ids"]) > 1


def _conversations():
    rows = load_helpsteer(helpsteer_sample_path(), DEFAULT_SCHEMA)["train"]
    convs = [helpsteer_to_conversation(r, DEFAULT_SCHEMA) for r in rows]
    return convs + [c for t in load_oasst_trees(FIXTURE) for c in oasst_threads(t, DEFAULT_SCHEMA)]


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_loss_mask_decodes_to_responses(tokenizer) -> None:
    for conv in _conversations():
        rendered = render_sft(conv)
        tok = tokenize_rendered(rendered, tokenizer)
        assert tokenizer.decode(tok.input_ids) == rendered.text  # lossless
        trained = [tokenizer.decode(tok.input_ids[a:b]) for a, b in _runs(tok.loss_mask)]
        expected = [f"{t.value}\n<extra_id_1>" for t in conv.turns if t.role == "Assistant"]
        assert trained == expected


def test_add_bos_is_masked(tokenizer) -> None:
    conv = _conversations()[0]
    tok = tokenize_rendered(render_sft(conv), tokenizer, add_bos=True)
    assert tok.input_ids[0] == tokenizer.bos_token_id and tok.loss_mask[0] is False


def test_tiny_tokenizer_is_reproducible(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("train_tiny_tokenizer", ROOT / "scripts" / "train_tiny_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build_tiny(tmp_path / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "tok" / name).read_bytes() == (tiny_tokenizer_path() / name).read_bytes(), name
