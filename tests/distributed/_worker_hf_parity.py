"""Worker for test_hf_parity: import a Hugging Face directory at a TP/PP layout and compare logits with transformers.

Run under ``torchrun --nproc_per_node 2``::

    _worker_hf_parity.py --hf DIR --kind sft|apm --tp 2 --pp 1 --nemo OUT.nemo --out result.json

Every rank imports (its shard) and saves the ``.nemo`` (collective), restores it at the same layout, runs a
forward through megatron's pipeline schedule, and the last stage compares with ``transformers`` (the reference is
computed in the worker from the same directory). Global rank 0 writes the max abs difference.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
import transformers

from nemo_steerlm.interop.convert import import_hf
from nemo_steerlm.megatron.step import run_forward_collect
from nemo_steerlm.models.checkpoint import restore_nemo

SEQ = 16


def forward_step(kind: str):
    def step(data_iterator, model):
        batch = next(data_iterator)
        tokens = batch["tokens"]
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
        if kind == "apm":
            output = model(tokens, positions, None, last_token_index=batch["last"])
        else:
            output = model(tokens, positions, None)

        def loss_func(out, non_loss_data=False):
            return out.detach().float()

        return output, loss_func

    return step


def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """Our TP-sharded logits [b, s, V/TP] -> full [b, s, V] (vocabulary split over TP ranks)."""
    from megatron.core import parallel_state

    group = parallel_state.get_tensor_model_parallel_group()
    parts = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, logits.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--hf", "--kind", "--nemo", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    args = parser.parse_args()
    layout = {"tensor_model_parallel_size": args.tp, "pipeline_model_parallel_size": args.pp}
    import_hf(args.hf, args.kind, args.nemo, layout)
    model = restore_nemo(args.nemo, args.kind, layout)
    gen = torch.Generator().manual_seed(7)
    vocab = model.gpt_config.vocab_size
    pad = model.tokenizer.pad_token_id
    tokens = torch.randint(0, vocab, (2, SEQ), generator=gen)
    tokens[tokens == pad] = 0  # the HF classifier scores the last token that is not the pad id
    last = torch.tensor([SEQ - 1, SEQ - 1])
    outs = run_forward_collect(forward_step(args.kind), [model.model], [{"tokens": tokens, "last": last}], SEQ, 2)
    result = {}
    if outs:
        with torch.no_grad():
            if args.kind == "apm":
                ours = outs[0]
                hf = transformers.LlamaForSequenceClassification.from_pretrained(
                    args.hf, num_labels=ours.shape[-1], pad_token_id=pad
                )
                head = model.model.regression_head
                hf.score.weight.data.copy_(head.weight)
                assert head.bias is None  # like the score layer of HF sequence classification
                theirs = hf.eval()(input_ids=tokens).logits
            else:
                ours = gather_vocab(outs[0])[..., :vocab]
                theirs = transformers.LlamaForCausalLM.from_pretrained(args.hf).eval()(input_ids=tokens).logits
        result = {"max_abs_diff": float((ours - theirs).abs().max()), "shape": list(ours.shape)}
    holder = [result]
    if dist.get_world_size() > 1:
        everything = [None] * dist.get_world_size()
        dist.all_gather_object(everything, result)
        holder = [r for r in everything if r]
    if dist.get_rank() == 0:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(holder[0], handle)


if __name__ == "__main__":
    main()
