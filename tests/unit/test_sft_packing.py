"""SFT loss masks on the real sample, and packing = no packing through the real SteerLMSFTModel forward.

The mask check decodes the tokens the loss is taken on and compares them with text built independently from the
conversation (each assistant value, a newline and the turn marker). The packing check runs the same conversations
packed into one row (block-diagonal attention, positions restarting) and one per row, at world size 1, and compares
the per-token losses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from nemo_steerlm import resources
from nemo_steerlm.attributes import ASSISTANT_ROLE, TURN_MARKER, AttributeSchema
from nemo_steerlm.data.datasets import SFTDataset, collate_sft, pack_samples
from nemo_steerlm.data.formats import read_sft_jsonl
from nemo_steerlm.data.prepare import PrepareSpec, SourceSpec, prepare
from nemo_steerlm.data.tokenization import load_tokenizer
from nemo_steerlm.recipes.common import CONF_DIR
from nemo_steerlm.resources import helpsteer_sample_path

TOKENIZER = Path(resources.__file__).resolve().parent / "tokenizers" / "steerlm_bpe_4k"


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    """The shipped HelpSteer sample converted to SFT JSONL by the real `prepare` code."""
    out = tmp_path_factory.mktemp("sft_packing")
    spec = PrepareSpec(sources=[SourceSpec("helpsteer", str(helpsteer_sample_path()), 1)], val_fraction=0.0, seed=1)
    prepare(spec, AttributeSchema(), out)
    return read_sft_jsonl(out / "sft" / "train.jsonl", AttributeSchema())


def _runs(values: list[bool]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, v in enumerate([*values, False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i))
            start = None
    return out


def test_loss_mask_is_exactly_each_response_and_its_marker(conversations):
    tok = load_tokenizer(TOKENIZER)
    data = SFTDataset(conversations, tok, seq_length=8192, max_context_tokens=0)
    assert data.num_truncated == 0 and data.num_skipped == 0 and len(data) == len(conversations) > 300
    for conv, sample in zip(conversations, data.samples, strict=True):
        batch = collate_sft([sample], pad_id=int(tok.pad_token_id))
        labels, mask = batch["labels"][0].tolist(), (batch["loss_mask"][0] > 0).tolist()
        got = [tok.decode(labels[a:b], skip_special_tokens=False) for a, b in _runs(mask)]
        want = [f"{t.value}\n{TURN_MARKER}" for t in conv.turns if t.role == ASSISTANT_ROLE]
        assert got == want
        # nothing else is trained on: the masked-out labels hold the system prompt, user turns and the label
        assert sum(mask) == sum(len(tok(w, add_special_tokens=False)["input_ids"]) for w in want)


def _tiny_sft_model(seq_length: int):
    from nemo_steerlm.models.sft import SteerLMSFTModel

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("train_sft", overrides=[f"model.seq_length={seq_length}", "model.init_method_std=0.2"])
    model_cfg = cfg.model
    model_cfg.data.train = None
    return SteerLMSFTModel(model_cfg, trainer=None)


def test_packed_rows_give_the_same_per_token_loss_as_unpacked(conversations):
    from nemo_steerlm.megatron.attention import attention_inputs

    seq = 512
    model = _tiny_sft_model(seq)
    data = SFTDataset(conversations[:40], model.tokenizer, seq_length=seq, max_context_tokens=32)
    bins = [b for b in pack_samples([len(s.input_ids) - 1 for s in data.samples], seq) if len(b) >= 3][:2]
    assert bins, "the sample should pack at least three conversations into one row"
    pad = int(model.tokenizer.pad_token_id)
    packed = collate_sft([[data[i] for i in b] for b in bins], pad_id=pad)
    assert "document_ids" in packed
    model.model.eval()
    with torch.no_grad():
        packed_loss = model.model(
            packed["tokens"],
            packed["position_ids"],
            labels=packed["labels"],
            **attention_inputs(model.model, packed["document_ids"]),
        )
        for row, members in enumerate(bins):
            at = 0
            for i in members:
                alone = collate_sft([data[i]], pad_id=pad)
                loss = model.model(alone["tokens"], alone["position_ids"], None, labels=alone["labels"])[0]
                n = loss.shape[0]
                mask = alone["loss_mask"][0] > 0
                assert torch.equal(packed["loss_mask"][row, at : at + n] > 0, mask)
                diff = (packed_loss[row, at : at + n] - loss).abs().max().item()
                assert diff <= 1e-5, f"row {row}, conversation {i}: per-token loss differs by {diff}"
                at += n
    # a wrong packing (no block-diagonal mask: attention crosses conversations) must be detected
    with torch.no_grad():
        leaky = model.model(packed["tokens"], packed["position_ids"], None, labels=packed["labels"])
    first = len(data[bins[0][0]].input_ids) - 1
    assert (leaky[0, first:] - packed_loss[0, first:]).abs().max().item() > 1e-3
