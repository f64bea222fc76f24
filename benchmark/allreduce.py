"""The benchmark's process group: the rendezvous time and the per-step cost of DDP's gradient
all-reduce at a model's size (ResNet-50: 25,557,032 float32 parameters), over whatever the
launcher gave (2 nodes x 1 rank under srun, or 1 node x 2 ranks under torchrun; gloo on CPUs).
Every rank runs it; rank 0 writes the numbers."""

import json
import statistics
import time

import torch
import torch.distributed as dist

from ssl2det.distributed import init_distributed
from ssl2det.placement import node_name

RESNET50_PARAMETERS = 25_557_032


def measure_allreduce(elements: int, iters: int, warmup: int = 2) -> dict:
    started = time.perf_counter()
    rank, world, _ = init_distributed("cpu")
    dist.barrier()
    rendezvous_s = time.perf_counter() - started
    tensor = torch.ones(elements)
    times = []
    for i in range(warmup + iters):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(tensor)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    nodes = [None] * world
    dist.all_gather_object(nodes, node_name())
    dist.destroy_process_group()
    step = statistics.median(times)
    return {"world_size": world, "nodes": len(set(nodes)), "elements": elements,
            "rendezvous_s": round(rendezvous_s, 3), "allreduce_s": round(step, 4),
            "allreduce_GB_s": round(elements * 4 / step / 1e9, 3), "rank": rank}


def report_allreduce(args) -> None:
    result = measure_allreduce(args.elements, args.iters, args.warmup)
    if result.pop("rank") == 0:
        print(json.dumps(result))
        if args.output:
            with open(args.output, "w") as f:
                json.dump(result, f, indent=1)
