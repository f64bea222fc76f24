"""Where this process stands in a run of several: its rank, the world, its rank on its machine,
its machine among the run's machines, and where they meet, read once from what its launcher
set. The one reader of "which machine am I" (pretraining, the probe and train_net ask it);
with pipeline/executors/, the only code that names a scheduler's variables
(tests/test_architecture.py checks it). A new launcher (Kubernetes, MPI) is a reader here.

- torchrun (and torch.distributed.launch): RANK, WORLD_SIZE, LOCAL_RANK, GROUP_RANK (the
  machine), GROUP_WORLD_SIZE (the machines; else WORLD_SIZE / LOCAL_WORLD_SIZE), MASTER_ADDR,
  MASTER_PORT.
- SLURM (`srun`, one task per rank or per machine): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
  SLURM_NODEID, SLURM_NNODES, and the meeting point: MASTER_ADDR / MASTER_PORT where the job
  exported them (the pipeline's SLURM jobs export a port rank 0's task found free:
  pipeline/executors/slurm.py), else the first node of SLURM_JOB_NODELIST and a port from the
  job id (ours; two such jobs 20,000 ids apart on one node collide: docs/cluster.md).
- Neither: one process.
"""

import os
import re
import socket
from dataclasses import dataclass

from .errors import ConfigError

#: ports a SLURM job's processes meet at, from its job id: [BASE, BASE + SPAN) (ours)
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class Placement:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0
    nodes: int = 1
    master_addr: str = ""  # "": none set (one process, or a task outside a job's step)
    master_port: int = 0
    launcher: str = "none"  # "torchrun", "slurm", "none"
    node: str = ""  # this machine, as its scheduler names it

    @property
    def dist_url(self) -> str:
        return f"tcp://{self.master_addr}:{self.master_port}"


def expand_hostlist(hostlist: str) -> list:
    """SLURM's compressed host list ("node[01-03,07],gpu5") as host names."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", hostlist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            for number in range(int(first), int(last or first) + 1):
                hosts.append(f"{prefix}{number:0{len(first)}d}")
    return hosts


def node_name() -> str:
    """This machine as its scheduler names it (SLURM's node name), else its host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _int(env, name, default) -> int:
    value = env.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError:
        raise ConfigError(f"the launcher's {name}={value!r} is not a number") from None


def _slurm_master(env) -> tuple:
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"], _int(env, "MASTER_PORT", 29500)
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodes:  # (not in a job's step: init_distributed says what to do)
        return "", 0
    job = int(re.sub(r"\D", "", env.get("SLURM_JOB_ID", "0")) or 0)
    return expand_hostlist(nodes)[0], SLURM_PORT_BASE + job % SLURM_PORT_SPAN


def placement(env=None) -> Placement:
    """This process's placement, from `env` (default: os.environ); the module docstring."""
    env = os.environ if env is None else env
    node = env.get("SLURMD_NODENAME") or socket.gethostname()  # (node_name(), of `env`)
    if "RANK" in env and "WORLD_SIZE" in env:
        world, local_world = _int(env, "WORLD_SIZE", 1), _int(env, "LOCAL_WORLD_SIZE", 0)
        nodes = _int(env, "GROUP_WORLD_SIZE", world // local_world if local_world else 1)
        return Placement(_int(env, "RANK", 0), world, _int(env, "LOCAL_RANK", 0),
                         _int(env, "GROUP_RANK", 0), max(1, nodes), env.get("MASTER_ADDR", ""),
                         _int(env, "MASTER_PORT", 0), "torchrun", node)
    if "SLURM_PROCID" in env:
        tasks = _int(env, "SLURM_NTASKS", 1)
        nodes = _int(env, "SLURM_NNODES", _int(env, "SLURM_JOB_NUM_NODES", 1))
        host, port = _slurm_master(env) if tasks > 1 or nodes > 1 else ("", 0)
        return Placement(_int(env, "SLURM_PROCID", 0), tasks, _int(env, "SLURM_LOCALID", 0),
                         _int(env, "SLURM_NODEID", 0), nodes, host, port, "slurm", node)
    return Placement(node=node)
