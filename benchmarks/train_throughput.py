"""SFT training throughput on HelpSteer's length mix: ours (megatron, packed rows) vs ``transformers`` (SDPA, padded).

The same model shape both ways, random weights (speed and memory do not depend on them), the same dtype, AdamW:

* ``hf-random``: ``LlamaForCausalLM`` (``attn_implementation="sdpa"``), micro-batches of ``--batch`` conversations in
  random order, right-padded with an attention mask (what ``transformers`` training does by default);
* ``hf-grouped``: the same, batches of similar lengths (sorted, then the batch order shuffled);
* ``ours``: our megatron GPT (``model.core_attention=sdpa``), conversations packed into ``--seq``-token rows
  (first-fit decreasing, as ``model.data.packing``), per-token document ids (FlexAttention on CUDA), megatron's
  optimizer (bf16 parameters with fp32 main weights when ``--dtype bfloat16``), ``--rows`` rows per step.

The conversation lengths are the token counts of the shipped HelpSteer sample rendered as SFT text (tokenised with
SmolLM2's tokenizer when ``scripts/fetch_smollm2.py`` has written it, the shipped 4k BPE otherwise), clipped to
``--seq``. Each configuration runs in its own process (so its peak memory is its own): one warm-up step, then
``--steps`` timed steps. Reported: real tokens/s (padding excluded), MFU of the real tokens' model FLOPs (6 × matmul
parameters per token plus causal attention) against a bf16 matmul peak measured on the same device, and peak memory
(``max_memory_allocated`` on CUDA, the process's resident set on CPU). Rewrites its section of docs/benchmarks.md.

Usage::

    python benchmarks/train_throughput.py [--device cpu|cuda] [--shape smollm2 llama1b] [--steps 3] [--seq 2048]
        [--batch 8] [--rows 4] [--dtype bfloat16|float32] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from _doc import DOC, cpu_model, update_section  # benchmarks/ is the script's folder

START, END = "<!-- train_throughput:start -->", "<!-- train_throughput:end -->"
VOCAB = 49152
SHAPES = {  # (layers, hidden, ffn, heads, kv heads, tied embeddings)
    "smollm2": (30, 576, 1536, 9, 3, True),
    "llama1b": (16, 2048, 8192, 32, 8, True),
}
MODES = ("hf-random", "hf-grouped", "ours")
SMOLLM2 = Path(os.environ.get("NEMO_STEERLM_CACHE", Path.home() / ".cache" / "nemo_steerlm")) / "smollm2-135m-instruct"


def helpsteer_lengths(seq: int) -> list[int]:
    """Token counts of the shipped sample's SFT texts (clipped to ``seq``), in file order."""
    from nemo_steerlm import resources
    from nemo_steerlm.attributes import AttributeSchema
    from nemo_steerlm.data.sources import helpsteer_to_conversation, load_helpsteer
    from nemo_steerlm.data.template import render_sft
    from nemo_steerlm.data.tokenization import load_tokenizer
    from nemo_steerlm.resources import helpsteer_sample_path

    shipped = Path(resources.__file__).resolve().parent / "tokenizers" / "steerlm_bpe_4k"
    tok_dir = SMOLLM2 if SMOLLM2.exists() else shipped
    tokenizer = load_tokenizer(tok_dir)
    schema = AttributeSchema()
    rows = load_helpsteer(str(helpsteer_sample_path()), schema)["train"]
    texts = [render_sft(helpsteer_to_conversation(r, schema)).text for r in rows]
    return [min(len(tokenizer(t, add_special_tokens=False)["input_ids"]), seq) for t in texts]


def bf16_peak(device: str) -> float:
    """Measured bf16 matmul FLOP/s on this device (square matmuls, best of a few)."""
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = 0.0
    for _ in range(5 if device == "cuda" else 3):
        _sync(device)
        start = time.perf_counter()
        for _ in range(10 if device == "cuda" else 2):
            a @ b
        _sync(device)
        best = max(best, (10 if device == "cuda" else 2) * 2 * n**3 / (time.perf_counter() - start))
    return best


def model_flops(shape: tuple, lengths: list[int]) -> float:
    """Training FLOPs of conversations of these lengths: 6 × matmul parameters per token + causal attention."""
    layers, hidden, ffn, heads, kv, _ = shape
    head = hidden // heads
    per_layer = hidden * (heads + 2 * kv) * head + heads * head * hidden + 3 * hidden * ffn
    matmul_params = layers * per_layer + hidden * VOCAB
    attention = sum(6 * layers * hidden * n * n for n in lengths)  # QK^T and AV, causal half, forward + backward
    return 6 * matmul_params * sum(lengths) + attention


def hf_steps(args: argparse.Namespace, lengths: list[int]) -> list[list[int]]:
    """Per step, the conversation lengths of one padded micro-batch (random order or length-grouped)."""
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if args.mode == "hf-grouped":
        order.sort(key=lambda i: lengths[i])
    batches = [order[i : i + args.batch] for i in range(0, len(order) - args.batch + 1, args.batch)]
    if args.mode == "hf-grouped":
        rng.shuffle(batches)
    return [[lengths[i] for i in b] for b in batches]


def run_hf(args: argparse.Namespace, lengths: list[int]) -> tuple[list[float], list[int], list[int]]:
    """Step times, real and padded token counts of ``transformers`` training steps."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, ffn, heads, kv, tied = SHAPES[args.shape]
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=max(args.seq, 2048),
        tie_word_embeddings=tied,
        rope_theta=100000.0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=args.device, dtype=getattr(torch, args.dtype))
    model.config._attn_implementation = "sdpa"
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times, real, padded = [], [], []
    for step, batch in enumerate(hf_steps(args, lengths)[: args.steps + 1]):
        width = max(batch)
        tokens = torch.randint(0, VOCAB, (len(batch), width), device=args.device)
        mask = torch.zeros_like(tokens)
        for r, n in enumerate(batch):
            mask[r, :n] = 1
        labels = tokens.masked_fill(mask == 0, -100)
        _sync(args.device)
        start = time.perf_counter()
        loss = model(input_ids=tokens, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(args.device)
        if step:  # the first step is the warm-up
            times.append(time.perf_counter() - start)
            real.append(sum(batch))
            padded.append(width * len(batch))
    return times, real, padded


def run_ours(args: argparse.Namespace, lengths: list[int]) -> tuple[list[float], list[int], list[int]]:
    """Step times, real and padded token counts of our packed megatron training steps."""
    import torch

    from nemo_steerlm.data.datasets import SFTSample, collate_sft, pack_samples
    from nemo_steerlm.megatron import builder, parallel
    from nemo_steerlm.megatron.config import GPTConfig, ParallelConfig
    from nemo_steerlm.megatron.step import run_step
    from nemo_steerlm.models.gpt import PositionAwareGPTModel
    from nemo_steerlm.models.sft import SteerLMSFTModel

    layers, hidden, ffn, heads, kv, tied = SHAPES[args.shape]
    gpt = GPTConfig(layers, hidden, ffn, heads, kv, VOCAB, max(args.seq, 2048), rotary_base=100000, tie_embeddings=tied)
    layout = ParallelConfig(params_dtype=args.dtype)
    parallel.initialize_model_parallel(layout, seed=0)
    config = builder.build_transformer_config(gpt, layout, calculate_per_token_loss=True)
    model = builder.build_gpt_model(gpt, config, model_cls=PositionAwareGPTModel)
    chunks = builder.wrap_ddp([model], config)
    optimizer = builder.build_optimizer(chunks, lr=1e-5, params_dtype=args.dtype)
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    bins = pack_samples([lengths[i] for i in order], args.seq)
    rng.shuffle(bins)
    gen = torch.Generator().manual_seed(0)

    def sample(n: int) -> SFTSample:
        return SFTSample(torch.randint(0, VOCAB, (n + 1,), generator=gen).tolist(), [True] * (n + 1))

    def forward_step(it, m):
        return SteerLMSFTModel.forward_step(None, it, m)

    times, real, padded = [], [], []
    rows_per_step = [bins[i : i + args.rows] for i in range(0, len(bins) - args.rows + 1, args.rows)]
    for step, rows in enumerate(rows_per_step[: args.steps + 1]):
        items = [[sample(lengths[order[i]]) for i in row] for row in rows]
        batch = collate_sft(items, pad_id=0, pad_to=args.seq)
        _sync(args.device)
        start = time.perf_counter()
        run_step(forward_step, chunks, [batch], args.seq, len(rows), optimizer=optimizer)
        _sync(args.device)
        if step:
            times.append(time.perf_counter() - start)
            real.append(sum(lengths[order[i]] for row in rows for i in row))
            padded.append(args.seq * len(rows))
    return times, real, padded


def child(args: argparse.Namespace) -> dict:
    """One configuration in this process."""
    import torch

    lengths = helpsteer_lengths(args.seq)
    times, real, padded = (run_ours if args.mode == "ours" else run_hf)(args, lengths)
    seconds, real_tokens = sum(times), sum(real)
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    mean_len = sum(lengths) / len(lengths)
    flops = model_flops(SHAPES[args.shape], lengths) / sum(lengths) * real_tokens  # the mix's mean cost per token
    return {
        "mode": args.mode,
        "tokens_per_s": real_tokens / seconds,
        "real_fraction": real_tokens / sum(padded),
        "flops_per_s": flops / seconds,
        "peak_gib": peak,
        "mean_length": mean_len,
    }


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPUs ({cpu_model()}), torch {torch.__version__}, threads {torch.get_num_threads()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", nargs="+", choices=sorted(SHAPES), default=["smollm2"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step")
    parser.add_argument("--seq", type=int, default=2048, help="packed row length (conversations are clipped to it)")
    parser.add_argument("--batch", type=int, default=8, help="conversations per transformers micro-batch")
    parser.add_argument("--rows", type=int, default=4, help="packed rows per step of ours")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        args.shape = args.shape[0]
        print(json.dumps(child(args)))
        return
    import torch

    peak = bf16_peak(args.device)
    results = {}
    for shape in args.shape:
        for mode in MODES:
            cmd = [sys.executable, __file__, "--mode", mode, "--shape", shape, "--device", args.device]
            cmd += ["--steps", str(args.steps), "--seq", str(args.seq), "--batch", str(args.batch)]
            cmd += ["--rows", str(args.rows), "--dtype", args.dtype]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode:
                tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
                results[(shape, mode)] = {"error": f"exit {proc.returncode}: {tail[:160]}"}
            else:
                results[(shape, mode)] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(shape, mode, json.dumps(results[(shape, mode)]), flush=True)
    section = render(results, args, peak, machine(args.device), torch.__version__)
    print(section)
    if not args.no_write:
        update_section(section, START, END)
        print(f"updated {DOC}")


def render(results: dict, args: argparse.Namespace, peak: float, device: str, version: str) -> str:
    """The docs section: one row per shape and mode, ratios against the length-grouped ``transformers`` run."""
    command = " ".join(["python benchmarks/train_throughput.py", *sys.argv[1:]])
    lines = [
        START,
        "## SFT training throughput: ours (packed) vs `transformers` (padded), HelpSteer length mix",
        "",
        f"Device: {device}. Command: `{command}`. {args.dtype}, {args.steps} timed steps after a warm-up; "
        f"`transformers` micro-batches of {args.batch} conversations; ours {args.rows} packed rows of {args.seq} "
        f"tokens per step; conversation lengths of the shipped sample clipped to {args.seq}. MFU: model FLOPs of the "
        f"real tokens / measured bf16 matmul peak ({peak / 1e12:.2f} TFLOP/s).",
        "",
        "| shape | run | real tok/s | real share of tokens | MFU | peak GiB | vs hf-grouped |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (shape, mode), r in results.items():
        if "error" in r:
            lines.append(f"| {shape} | {mode} | {r['error']} | | | | |")
            continue
        ref = results.get((shape, "hf-grouped"), {})
        ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}×" if "tokens_per_s" in ref else "—"
        lines.append(
            f"| {shape} | {mode} | {r['tokens_per_s']:.0f} | {r['real_fraction']:.0%} | "
            f"{r['flops_per_s'] / peak:.1%} | {r['peak_gib']:.2f} | {ratio} |"
        )
    return "\n".join(lines + [END]) + "\n"


if __name__ == "__main__":
    main()
