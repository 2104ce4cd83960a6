"""Data files shipped with the package: the HelpSteer sample and the tokenizers used by tests and tiny runs.

* ``helpsteer/helpsteer_train_sample.jsonl``: first 399 rows of ``nvidia/HelpSteer`` train (CC-BY-4.0, see its README).
* ``tokenizers/steerlm_bpe_4k``: a 4096-token byte-level BPE trained on that sample by
  ``scripts/train_tiny_tokenizer.py``; ``<extra_id_0..2>`` are single special tokens, ``<|endoftext|>`` is bos/eos/pad.
* ``tokenizers/gpt2``: the original GPT-2 byte-level BPE (MIT); the ``<extra_id_*>`` markers are plain text there.
"""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parent


def _existing(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"packaged resource {path} is missing; reinstall nemo-steerlm")
    return path


def helpsteer_sample_path() -> Path:
    """Path of the shipped 399-row HelpSteer train sample (JSONL)."""
    return _existing(_ROOT / "helpsteer" / "helpsteer_train_sample.jsonl")


def tiny_tokenizer_path() -> Path:
    """Hugging Face tokenizer folder of the 4k byte-level BPE trained on the sample (load with AutoTokenizer)."""
    return _existing(_ROOT / "tokenizers" / "steerlm_bpe_4k")


def gpt2_tokenizer_path() -> Path:
    """Hugging Face tokenizer folder of the original GPT-2 BPE (load with AutoTokenizer, offline)."""
    return _existing(_ROOT / "tokenizers" / "gpt2")
