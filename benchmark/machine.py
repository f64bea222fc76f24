"""What every benchmark record names about the machine: a CPU figure means little without the
instruction set its kernels used (bf16 autocast is 25x float32 on AVX2 and faster on AMX)."""

import torch

from ssl2det.environment import cpu_model
from ssl2det.precision import cpu_isa


def machine() -> dict:
    """{cpu, cpu_isa, gpu, torch, threads} of this process."""
    return {"cpu": cpu_model(), "cpu_isa": cpu_isa(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def describe_machine() -> str:
    """One line for a benchmark's printed table."""
    m = machine()
    return (f"machine: {m['cpu']} ({m['cpu_isa']}), {m['threads']} torch threads"
            + (f", {m['gpu']}" if m["gpu"] else "") + f", torch {m['torch']}")
