"""A rank for test_ranks.py: `OUT ok` all-reduces its rank + 1 and rank 0 writes the sum and every rank's torchrun
variables to OUT; `OUT fail` has rank 1 exit 3 while rank 0 waits in a collective it never finishes; `OUT cuda` does
the all-reduce over NCCL on the rank's own GPU, which a forked rank must be able to initialise."""

import json
import os
import sys
import time

import torch
import torch.distributed as dist

from bench.ranks import rank_env

out, mode = sys.argv[1], sys.argv[2]
cuda = mode == "cuda"
if mode == "fail" and os.environ["RANK"] == "0":
    # before the group forms: rank 1 cannot pass init_process_group, and exit, before rank 0 has reached it
    open(out, "w").write(str(os.getpid()))
if cuda:
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
else:
    dist.init_process_group("gloo")
rank = dist.get_rank()
if mode == "fail":
    if rank == 1:
        sys.exit(3)
    time.sleep(120)
total = torch.tensor([rank + 1.0], device="cuda" if cuda else "cpu")
dist.all_reduce(total)
env = [None] * dist.get_world_size()
dist.all_gather_object(env, {k: os.environ[k] for k in rank_env(0, 1, 0, "")})
if rank == 0:
    json.dump({"sum": total.item(), "env": env, "argv": sys.argv[1:]}, open(out, "w"))
