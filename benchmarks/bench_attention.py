"""One training step of the SmolLM2-135M shape with megatron's local attention and with SDPA (``model.core_attention``).

For each micro-batch shape, each attention runs in its own fresh process (so peak memory is its own): build the
30-layer model (random weights: speed and memory do not depend on them), run one forward + backward as warm-up, then
time ``--steps`` more. Reports seconds per step, tokens/s and the peak memory of the process (resident set on CPU,
``torch.cuda.max_memory_allocated`` on a GPU), the ratios local / SDPA, and rewrites its section of
``docs/benchmarks.md``.

Usage::

    python benchmarks/bench_attention.py [--shapes 1x1024 4x1024] [--steps 2] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from _doc import DOC, cpu_model, update_section  # benchmarks/ is the script's folder

START, END = "<!-- bench_attention:start -->", "<!-- bench_attention:end -->"
VOCAB = 49152  # SmolLM2's tokenizer


def one(core_attention: str, batch: int, seq: int, steps: int) -> dict:
    """Runs in the child process: builds the model and times ``steps`` forward + backward passes."""
    import dataclasses

    import torch

    from nemo_steerlm.megatron import builder, parallel
    from nemo_steerlm.megatron.config import PRESETS, ParallelConfig

    gpt = dataclasses.replace(PRESETS["smollm2_135m"].with_vocab_size(VOCAB), seq_length=max(seq, 2048))
    parallel.initialize_model_parallel(ParallelConfig(), seed=0)
    model = builder.build_gpt_model(
        gpt, builder.build_transformer_config(gpt, ParallelConfig()), core_attention=core_attention
    )
    device = parallel.device()
    tokens = torch.randint(0, VOCAB, (batch, seq), device=device)
    positions = torch.arange(seq, device=device).expand(batch, seq)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(tokens, positions, None, labels=tokens).float().mean().backward()

    step()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    seconds = (time.perf_counter() - start) / steps
    return {"seconds": seconds, "tokens_per_s": batch * seq / seconds, "peak_gib": peak, "device": str(device)}


def run_child(core_attention: str, batch: int, seq: int, steps: int) -> dict:
    """``one`` in a fresh interpreter; a child killed for memory is reported, not fatal."""
    cmd = [sys.executable, __file__, "--child", core_attention, str(batch), str(seq), str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ['killed']}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    return f"{os.cpu_count()} CPUs ({cpu_model()}), torch {torch.__version__}, OMP_NUM_THREADS {threads}"


def render(rows: list[tuple[str, dict, dict]], steps: int) -> str:
    lines = [
        START,
        "## Core attention: megatron's local `DotProductAttention` vs SDPA (`model.core_attention`)",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/bench_attention.py` (SmolLM2-135M shape, 30 layers, "
        f"random weights; one warm-up step, then the mean of {steps} forward + backward steps; each run in its own "
        "process; peak = resident set on CPU, `max_memory_allocated` on GPU).",
        "",
        "| micro-batch × tokens | local s/step | SDPA s/step | speed-up | local peak GiB | SDPA peak GiB "
        "| memory ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for shape, loc, sdpa in rows:
        if "error" in loc or "error" in sdpa:
            lines.append(f"| {shape} | {loc.get('error', '')} | {sdpa.get('error', '')} | — | — | — | — |")
            continue
        lines.append(
            f"| {shape} | {loc['seconds']:.2f} | {sdpa['seconds']:.2f} | {loc['seconds'] / sdpa['seconds']:.2f}× "
            f"| {loc['peak_gib']:.2f} | {sdpa['peak_gib']:.2f} | {loc['peak_gib'] / sdpa['peak_gib']:.2f}× |"
        )
    return "\n".join(lines + [END]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["1x1024", "4x1024"], help="micro-batch x tokens")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        attention, batch, seq, steps = args.child
        print(json.dumps(one(attention, int(batch), int(seq), int(steps))))
        return
    rows = []
    for shape in args.shapes:
        batch, seq = (int(x) for x in shape.split("x"))
        results = {a: run_child(a, batch, seq, args.steps) for a in ("local", "sdpa")}
        print(shape, json.dumps(results), flush=True)
        rows.append((shape, results["local"], results["sdpa"]))
    section = render(rows, args.steps)
    print(section)
    if not args.no_write:
        update_section(section, START, END)
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
