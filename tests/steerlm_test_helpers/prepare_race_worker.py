"""One rank of a job that starts with no ``data=``: resolves its training files in rounds, in step with the others.

Usage: ``python prepare_race_worker.py ROOT RANK WORLD ROUNDS``. For each round ``i`` the ranks meet at a file
barrier under ``ROOT/sync`` and then all call the stage's real ``resolve_training_files`` on ``ROOT/round_i`` at
once. Each real ``prepare`` call is counted with a line in ``ROOT/prepare_calls.txt``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

root, rank, world, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))

from hydra import compose, initialize_config_dir  # noqa: E402

from nemo_steerlm.recipes import training  # noqa: E402
from nemo_steerlm.recipes.common import CONF_DIR  # noqa: E402

real_prepare = training.prepare


def counted_prepare(*args, **kwargs):
    with open(root / "prepare_calls.txt", "a", encoding="utf-8") as fh:
        fh.write(f"{rank}\n")
    return real_prepare(*args, **kwargs)


training.prepare = counted_prepare

with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
    cfg = compose("train_apm")


def meet(name: str) -> None:
    sync = root / "sync"
    sync.mkdir(parents=True, exist_ok=True)
    (sync / f"{name}.{rank}").touch()
    deadline = time.monotonic() + 900  # the first meeting waits for every rank's imports (slow on a busy machine)
    while len(list(sync.glob(f"{name}.*"))) < world:
        if time.monotonic() > deadline:
            sys.exit(f"rank {rank}: the other ranks never reached {name}")
        time.sleep(0.001)


for i in range(rounds):
    meet(f"round{i}")
    train, val = training.resolve_training_files(cfg, root / f"round_{i}" / "run", "regression")
    assert train.is_file() and val is not None and val.is_file(), (train, val)
    print(f"rank {rank} round {i}: {sum(1 for _ in open(train, encoding='utf-8'))} training rows", flush=True)
