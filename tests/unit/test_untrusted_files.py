"""Damaged and untrusted files outside `.nemo` archives: Hugging Face weights, tokenizers with custom code, and the
distributed-checkpoint allow-list unpickler."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nemo_steerlm import resources
from nemo_steerlm.data.tokenization import load_tokenizer
from nemo_steerlm.errors import UnsafeCheckpointError, UserError
from nemo_steerlm.interop.convert import read_hf_state
from nemo_steerlm.interop.hf_llama import HFInteropError
from nemo_steerlm.megatron.safe_load import RestrictedUnpickler


def test_truncated_safetensors_names_the_file(tmp_path: Path) -> None:
    save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    assert set(read_hf_state(tmp_path)) == {"w"}
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HFInteropError, match="model.safetensors: unreadable or damaged"):
        read_hf_state(tmp_path)


def test_pickled_code_in_pytorch_model_bin_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"w": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(HFInteropError, match="pytorch_model.bin"):
        read_hf_state(tmp_path)
    assert not marker.exists()


def test_tokenizer_with_custom_code_is_refused_without_asking(tmp_path: Path, monkeypatch) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    src = Path(resources.__file__).resolve().parent / "tokenizers" / "steerlm_bpe_4k"
    (tok / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    config = {"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizerFast"]}}
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    (tok / "evil.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\n")
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("the user was asked whether to run custom code"))
    with pytest.raises(UserError, match="tokenizer at"):
        load_tokenizer(tok)
    assert not (tmp_path / "pwned").exists()


def test_restricted_unpickler_accepts_metadata_types_and_refuses_the_rest() -> None:
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    ok = pickle.dumps({"a": [ChunkStorageMetadata(torch.Size([1, 2]), torch.Size([3, 4]))], "d": torch.bfloat16})
    assert RestrictedUnpickler(io.BytesIO(ok), "m").load()["d"] is torch.bfloat16
    for evil in (pickle.dumps(print), pickle.dumps(Path("x")), pickle.dumps(torch.nn.Linear(1, 1))):
        with pytest.raises(UnsafeCheckpointError, match="m: refused to load"):
            RestrictedUnpickler(io.BytesIO(evil), "m").load()
