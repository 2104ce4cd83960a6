"""A 2-process torch.distributed (gloo) job started by the launcher's srun: all_reduce of the ranks."""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

out = Path(sys.argv[2].split("=", 1)[1])
dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the launcher's task script
rank = dist.get_rank()
t = torch.tensor([float(rank)])
dist.all_reduce(t)
out.mkdir(parents=True, exist_ok=True)
record = {"rank": rank, "world": dist.get_world_size(), "sum": t.item(), "node": os.environ["SLURMD_NODENAME"]}
record["local_rank"] = int(os.environ["LOCAL_RANK"])
(out / f"rank{rank}.json").write_text(json.dumps(record))
dist.destroy_process_group()
