"""Greedy decoding tokens/s: ours (``generate_ids``, megatron KV cache) against ``transformers`` ``generate``.

Both load the same Hugging Face Llama-architecture weights (ours through the import path), get the same prompts
(SteerLM inference prompts of the shipped HelpSteer sample with the default steering label, tokenised whole and cut
from the left to ``--prompt-tokens``), the same batch size and the same number of new tokens, greedy. Prompts are
sorted by length and cut into batches the same way for both; ``transformers`` pads on the left with an attention
mask. Both stop a row at the tokenizer's end-of-sequence token; tokens/s counts the tokens each produced (up to and
including the stop), over the wall time of all batches after one warm-up batch. It also reports how many rows give
the same first 16 greedy tokens.

Shapes: ``smollm2`` loads ``--hf`` (default: the SmolLM2-135M folder ``scripts/fetch_smollm2.py`` writes);
``llama1b`` writes a Llama-1B-shaped folder with random weights (16 layers, hidden 2048, 32/8 heads, ffn 8192, the
SmolLM2 tokenizer) into a temporary directory first (random weights: speed only, the agreement column is then not
meaningful).

Usage::

    python benchmarks/generate_throughput.py [--device cpu|cuda] [--shape smollm2|llama1b] [--batch 8]
        [--new-tokens 64] [--prompts 16] [--prompt-tokens 256] [--dtype float32|bfloat16] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _doc import DOC, cpu_model, update_section  # benchmarks/ is the script's folder

START, END = "<!-- generate_throughput:start -->", "<!-- generate_throughput:end -->"
SMOLLM2 = Path(os.environ.get("NEMO_STEERLM_CACHE", Path.home() / ".cache" / "nemo_steerlm")) / "smollm2-135m-instruct"
LLAMA_1B = {"num_hidden_layers": 16, "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32}
LLAMA_1B |= {"num_key_value_heads": 8, "tie_word_embeddings": True, "rope_theta": 500000.0}


def machine(device: str) -> str:
    """The device in words."""
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPUs ({cpu_model()}), torch {torch.__version__}, threads {torch.get_num_threads()}"


def random_llama_1b(hf_dir: Path, out: Path) -> Path:
    """A Llama-1B-shaped Hugging Face folder with random weights and ``hf_dir``'s tokenizer."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(hf_dir)
    for key, value in LLAMA_1B.items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (hf_dir / name).exists():
            shutil.copy(hf_dir / name, out / name)
    return out


def prompts(tokenizer, count: int, limit: int) -> list[list[int]]:
    """SteerLM inference prompts of the shipped sample, tokenised and cut from the left to ``limit`` tokens."""
    from nemo_steerlm.attributes import AttributeSchema
    from nemo_steerlm.data.sources import helpsteer_to_conversation, load_helpsteer
    from nemo_steerlm.data.template import render_prompt
    from nemo_steerlm.models.generation import prompt_conversation
    from nemo_steerlm.resources import helpsteer_sample_path

    schema = AttributeSchema()
    rows = load_helpsteer(str(helpsteer_sample_path()), schema)["train"][:count]
    convs = [prompt_conversation(helpsteer_to_conversation(r, schema))[0] for r in rows]
    texts = [render_prompt(c, schema.steer_label()) for c in convs]
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"])[-limit:] for t in texts]


def batches(ids: list[list[int]], size: int) -> list[list[int]]:
    """Length-sorted index batches (what both sides run)."""
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    return [order[i : i + size] for i in range(0, len(order), size)]


def run_ours(hf_dir: Path, ids: list[list[int]], args: argparse.Namespace) -> tuple[float, list[list[int]]]:
    """Seconds and generated ids of ``generate_ids`` over all batches (after a warm-up batch)."""
    from nemo_steerlm.attributes import AttributeSchema
    from nemo_steerlm.interop.convert import build_model_config, load_initial_weights, read_hf_config
    from nemo_steerlm.models.generation import SamplingParams, generate_ids
    from nemo_steerlm.models.sft import SteerLMSFTModel

    layout = {"params_dtype": args.dtype, "seq_length": args.prompt_tokens + args.new_tokens}
    cfg = build_model_config(read_hf_config(hf_dir), "sft", hf_dir, AttributeSchema(), layout)
    model = SteerLMSFTModel(cfg=cfg, trainer=None)
    load_initial_weights(model, hf_dir)
    params = SamplingParams(max_new_tokens=args.new_tokens, greedy=True, batch_size=args.batch, stop_text="")
    out: list[list[int]] = [[] for _ in ids]
    generate_ids(model, [ids[i] for i in batches(ids, args.batch)[0]], params)  # warm-up
    _sync(args.device)
    start = time.perf_counter()
    for idx in batches(ids, args.batch):
        for i, gen in zip(idx, generate_ids(model, [ids[i] for i in idx], params), strict=True):
            out[i] = gen.token_ids
    _sync(args.device)
    return time.perf_counter() - start, out


def run_hf(hf_dir: Path, ids: list[list[int]], args: argparse.Namespace) -> tuple[float, list[list[int]]]:
    """Seconds and generated ids of ``transformers`` ``generate`` (left padding, greedy, SDPA) over all batches."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype, attn_implementation="sdpa").to(args.device)
    model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[list[int]] = [[] for _ in ids]

    def one(idx: list[int]) -> list[list[int]]:
        width = max(len(ids[i]) for i in idx)
        tokens = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(tokens)
        for r, i in enumerate(idx):
            tokens[r, width - len(ids[i]) :], mask[r, width - len(ids[i]) :] = torch.tensor(ids[i]), 1
        with torch.no_grad():
            gen = model.generate(
                input_ids=tokens.to(args.device),
                attention_mask=mask.to(args.device),
                max_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tok.eos_token_id,
            )
        rows = []
        for row in gen[:, width:].tolist():
            rows.append(row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row)
        return rows

    one(batches(ids, args.batch)[0])  # warm-up
    _sync(args.device)
    start = time.perf_counter()
    for idx in batches(ids, args.batch):
        for i, row in zip(idx, one(idx), strict=True):
            out[i] = row
    _sync(args.device)
    return time.perf_counter() - start, out


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=["smollm2", "llama1b"], default="smollm2")
    parser.add_argument("--hf", type=Path, default=SMOLLM2, help="Hugging Face folder (weights and tokenizer)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = args.hf if args.shape == "smollm2" else random_llama_1b(args.hf, Path(tmp) / "llama1b")
        ids = prompts(AutoTokenizer.from_pretrained(hf_dir), args.prompts, args.prompt_tokens)
        hf_s, hf_ids = run_hf(hf_dir, ids, args)
        ours_s, our_ids = run_ours(hf_dir, ids, args)
    result = {
        "device": machine(args.device),
        "shape": args.shape,
        "batch": args.batch,
        "prompts": len(ids),
        "prompt_tokens_mean": sum(map(len, ids)) / len(ids),
        "new_tokens": args.new_tokens,
        "dtype": args.dtype,
        "ours_tok_s": sum(map(len, our_ids)) / ours_s,
        "hf_tok_s": sum(map(len, hf_ids)) / hf_s,
        "first16_equal": sum(a[:16] == b[:16] for a, b in zip(our_ids, hf_ids, strict=True)),
    }
    result["ratio"] = result["ours_tok_s"] / result["hf_tok_s"]
    print(json.dumps(result))
    if not args.no_write:
        write(result, args)


def write(r: dict, args: argparse.Namespace) -> None:
    """Adds this run's row to the generation section of docs/benchmarks.md (one row per device/shape/batch/dtype)."""
    key = f"| {r['device']} | {r['shape']} | {r['dtype']} | {r['batch']} × {r['new_tokens']} |"
    row = (
        f"{key} {r['prompts']} ({r['prompt_tokens_mean']:.0f}) | {r['ours_tok_s']:.1f} | {r['hf_tok_s']:.1f} "
        f"| {r['ratio']:.2f}× | {r['first16_equal']}/{r['prompts']} |"
    )
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    old = text.split(START, 1)[1].split(END, 1)[0] if START in text and END in text else ""
    rows = [line for line in old.splitlines() if line.startswith("| ") and not line.startswith(key)][2:]
    header = [
        START,
        "## Greedy decoding: `generate_ids` vs `transformers` `generate` (same weights, prompts and batch)",
        "",
        "Command: `python benchmarks/generate_throughput.py --device D --shape S --batch B --new-tokens N "
        "--prompts P --prompt-tokens T --dtype X` (prompts: the shipped HelpSteer sample's SteerLM prompts cut from "
        "the left to T tokens, mean length in brackets; tokens/s over all batches after a warm-up batch; both stop a "
        "row at EOS; last column: rows whose first 16 greedy tokens agree).",
        "",
        "| device | shape | dtype | batch × new tokens | prompts (mean tokens) | ours tok/s | transformers tok/s "
        "| ratio | first 16 equal |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    update_section("\n".join(header + rows + [row, END]) + "\n", START, END)
    print(f"updated {DOC}")


if __name__ == "__main__":
    main()
