"""Times ``nemo_steerlm.data.prepare.prepare`` on the shipped HelpSteer sample replicated 1x, 10x and 100x.

Copy ``j`` of every row gets the prompt suffix `` [copy j]``, so each copy is a new prompt and the prompt split has
more prompts to shuffle. Reports rows/s per size and the ratio time(100x) / time(10x) (10x the rows; target <= 10.5,
i.e. linear), and rewrites its section of ``docs/benchmarks.md``.

Usage::

    python benchmarks/bench_prepare.py [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _doc import DOC, cpu_model, update_section  # benchmarks/ is the script's folder

from nemo_steerlm.attributes import DEFAULT_SCHEMA
from nemo_steerlm.data.prepare import PrepareSpec, SourceSpec, prepare
from nemo_steerlm.resources import helpsteer_sample_path

START, END = "<!-- bench_prepare:start -->", "<!-- bench_prepare:end -->"
FACTORS = (1, 10, 100)


def make_input(path: Path, factor: int) -> int:
    rows = [json.loads(line) for line in helpsteer_sample_path().read_text(encoding="utf-8").splitlines()]
    with path.open("w", encoding="utf-8") as fh:
        for j in range(factor):
            for row in rows:
                fh.write(json.dumps({**row, "prompt": f"{row['prompt']} [copy {j}]"}, ensure_ascii=False) + "\n")
    return len(rows) * factor


def time_prepare(src: Path, out: Path) -> float:
    spec = PrepareSpec([SourceSpec("helpsteer", str(src), 1)], val_fraction=0.05, seed=0)
    start = time.perf_counter()
    prepare(spec, DEFAULT_SCHEMA, out)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds


def render(results: list[tuple[int, int, float]], ratio: float, tmp_dir: str | None) -> str:
    lines = [
        START,
        "## prepare (HelpSteer sample replicated)",
        "",
        f"Machine: {os.cpu_count()} CPUs (`nproc`), {cpu_model()}, Python {platform.python_version()} "
        f"({platform.system()}).",
        "",
        "Command: `python benchmarks/bench_prepare.py` (best of 3 interleaved rounds, val_fraction 0.05, "
        f"input and output under `{tmp_dir or tempfile.gettempdir()}`, fsynced).",
        "",
        "| input | rows | seconds | rows/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| sample x{f} | {n:,} | {t:.3f} | {n / t:,.0f} |" for f, n, t in results]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines += [
        "",
        f"Time ratio x100 / x10 (10x the rows): **{ratio:.2f}x** (target <= 10.5x).",
        "",
        f"Load average at the end of the run: {load} (a shared machine: single rounds varied up to 2x; the best "
        "round per size is reported).",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best time per size counts")
    parser.add_argument(
        "--tmp-dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where inputs and outputs go (default: tmpfs, so the disk's write-back does not dominate at 40k rows)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    best: dict[int, float] = {}
    rows: dict[int, int] = {}
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        for factor in FACTORS:
            rows[factor] = make_input(Path(tmp) / f"x{factor}.jsonl", factor)
        # interleaved rounds, best per size: a load spike on a shared machine hits one round, not one size
        for round_ in range(args.repeats):
            for factor in FACTORS:
                seconds = time_prepare(Path(tmp) / f"x{factor}.jsonl", Path(tmp) / "out")
                best[factor] = min(best.get(factor, float("inf")), seconds)
                print(f"round {round_}: x{factor} {rows[factor]} rows in {seconds:.3f}s", flush=True)
    results = [(f, rows[f], best[f]) for f in FACTORS]
    for factor, n, seconds in results:
        print(f"x{factor}: {n} rows, best {seconds:.3f}s ({n / seconds:,.0f} rows/s)")
    ratio = results[2][2] / results[1][2]
    print(f"time ratio x100/x10 = {ratio:.2f} (target <= 10.5)")
    section = render(results, ratio, args.tmp_dir)
    if not args.no_write:
        update_section(section, START, END)
        print(f"updated {DOC}")
    if ratio > 10.5:
        sys.exit(f"prepare scales worse than linearly: ratio {ratio:.2f} > 10.5")


if __name__ == "__main__":
    main()
