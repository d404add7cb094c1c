"""A rank for test_ranks.py: `OUT ok` all-reduces its rank + 1 and rank 0 writes the sum and every rank's torchrun
variables to OUT; `OUT fail` has rank 1 exit 3 while rank 0 waits in a collective it never finishes."""

import json
import os
import sys
import time

import torch
import torch.distributed as dist

from bench.ranks import rank_env

out, mode = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
if mode == "fail":
    if rank == 1:
        sys.exit(3)
    open(out, "w").write(str(os.getpid()))
    time.sleep(120)
total = torch.tensor([rank + 1.0])
dist.all_reduce(total)
env = [None] * dist.get_world_size()
dist.all_gather_object(env, {k: os.environ[k] for k in rank_env(0, 1, 0, "")})
if rank == 0:
    json.dump({"sum": total.item(), "env": env, "argv": sys.argv[1:]}, open(out, "w"))
