"""Process-group set-up and the collectives the losses need, with correct gradients.

The rule that keeps multi-process training equal to one process on the whole batch: every rank
computes a loss whose *mean over ranks* is the full-batch loss, gathers other ranks' embeddings
with `gather_with_grad` (whose backward sums the gradient from all ranks and returns this rank's
slice), and DDP averages the parameter gradients. tests/test_distributed.py checks it.
"""

import array
import datetime
import errno
import fcntl
import os
import re
import socket
import struct
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, UserError

_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


class UnreachableMasterError(UserError):
    """This rank cannot reach the address the process group meets at (exit 1)."""


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def ranks_from_environment():
    """(rank, world_size, local_rank) as the launcher set them; (0, 1, 0) for a single process.

    torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Under SLURM
    (`srun python -m pretrain ...`, one task per GPU) SLURM_PROCID / SLURM_NTASKS /
    SLURM_LOCALID are used, with MASTER_ADDR / MASTER_PORT exported by the sbatch script.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


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


def slurm_master_address() -> tuple:
    """(host, port) where the processes of this SLURM job meet: the first node of the job's
    node list, and a port derived from the job id (jobs sharing a node do not collide)."""
    env = os.environ
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodes:
        raise ConfigError("SLURM_PROCID is set but SLURM_JOB_NODELIST is not: run the tasks "
                          "with srun inside the job, or export MASTER_ADDR and MASTER_PORT")
    job = int(re.sub(r"\D", "", env.get("SLURM_JOB_ID", "0")) or 0)
    return expand_hostlist(nodes)[0], 20000 + job % 20000


def slurm_machines() -> tuple:
    """(machines, this machine's rank, dist URL) of a SLURM job that runs one task per node,
    for a launcher that starts the processes of each machine itself (detectron2's `launch`)."""
    host, port = slurm_master_address()
    return (int(os.environ.get("SLURM_NNODES", "1")), int(os.environ.get("SLURM_NODEID", "0")),
            f"tcp://{host}:{port}")


def _interface_addresses() -> dict:
    """{IPv4 address: interface name} of this machine's (this network namespace's) interfaces."""
    found = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            request = array.array("B", struct.pack("256s", name.encode()[:15]))
            try:
                fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address
                continue
            found[socket.inet_ntoa(request.tobytes()[20:24])] = name
    return found


def node_name() -> str:
    """This machine as its scheduler names it (SLURM's node name), else its host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def route_to(host: str, port: int) -> tuple:
    """(interface, local address) this machine reaches `host` over: the kernel's route, asked
    with a UDP socket (no packet is sent). An UnreachableMasterError when there is none."""
    try:
        address = socket.gethostbyname(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((address, port))
            local = s.getsockname()[0]
    except OSError as e:
        why = e.strerror or str(e)
        raise UnreachableMasterError(f"{node_name()} cannot reach the master {host}:{port} "
                                     f"({why}): is MASTER_ADDR an address of this network?") from None
    return _interface_addresses().get(local, "lo" if local.startswith("127.") else "?"), local


def _probe_master(host: str, port: int, interface: str, rank: int, seconds: float) -> None:
    """A connection to the master within `seconds`: refused is fine (its store may not listen
    yet; the host answered), no answer or no route is an UnreachableMasterError, not a hang."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, port), timeout=max(0.5, deadline - time.monotonic())
                                     ).close()
            return
        except ConnectionRefusedError:
            return
        except OSError as e:
            if time.monotonic() >= deadline or e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                raise UnreachableMasterError(
                    f"rank {rank} on {node_name()} cannot reach {host}:{port} over "
                    f"{interface} ({e.strerror or 'no answer'} within {seconds:g} s): the nodes "
                    "need a network in common; force one with DIST.SOCKET_IFNAME") from None
            time.sleep(0.2)


def choose_interface(host: str, port: int, rank: int, forced: str = "",
                     probe_s: float = 10.0) -> dict:
    """Before the process group forms: the interface whose address reaches the master (the
    route to MASTER_ADDR), or `forced`, set as GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME unless
    the user set them, and logged. gloo and NCCL otherwise take the address the host name
    resolves to, which on a machine with several networks may be one the other nodes cannot
    reach: the rendezvous then hangs until its time-out. Returns {host, address, interface}."""
    interface, address = route_to(host, port)
    if forced:
        interface = forced
        address = next((a for a, n in _interface_addresses().items() if n == forced), "?")
    for variable in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        if not os.environ.get(variable):  # the user's own setting stands
            os.environ[variable] = interface
    if rank:
        _probe_master(host, port, interface, rank, probe_s)
    # said before any logger is set up, on the rank's own output (its log under SLURM)
    print(f"[distributed] rank {rank} on {node_name()}: master {host}:{port} over "
          f"{os.environ['GLOO_SOCKET_IFNAME']} ({address})", file=sys.stderr, flush=True)
    return {"host": node_name(), "address": address,
            "interface": os.environ["GLOO_SOCKET_IFNAME"]}


def init_distributed(device_type: str, timeout_s: float = 600.0, socket_ifname: str = ""):
    """Join the process group described by the environment; returns (rank, world, local_rank).

    `timeout_s` bounds every collective: a rank whose peer hangs raises after it instead of
    waiting forever (a peer that dies is noticed at once: its connections close). The network
    interface is chosen first (`choose_interface`; `socket_ifname` forces one); where this
    rank runs is in `this_rank_address()`.
    """
    global _THIS_RANK
    rank, world, local = ranks_from_environment()
    if world > 1 and "SLURM_PROCID" in os.environ and "RANK" not in os.environ:
        if "MASTER_ADDR" not in os.environ:  # the job's first node, as every task computes it
            host, port = slurm_master_address()
            os.environ["MASTER_ADDR"] = host
            os.environ.setdefault("MASTER_PORT", str(port))
        os.environ.setdefault("MASTER_PORT", "29500")
    if world > 1 and not is_distributed():
        _THIS_RANK = choose_interface(os.environ.get("MASTER_ADDR", "127.0.0.1"),
                                      int(os.environ.get("MASTER_PORT", "29500")), rank,
                                      socket_ifname)
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return rank, world, local


_THIS_RANK = {}


def this_rank_address() -> dict:
    """{host, address, interface} this rank joined its process group from ({} alone)."""
    return dict(_THIS_RANK)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.batch, ctx.rank, ctx.group = x.shape[0], dist.get_rank(group), group
        out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(out, x.contiguous(), group=group)
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        # every rank's loss depends on this rank's slice: sum them
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.batch:(ctx.rank + 1) * ctx.batch], None


def gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate `x` from the ranks of `group` (default: all; rank order), keeping the
    gradient to the local slice."""
    return _GatherWithGrad.apply(x, group) if get_world_size() > 1 else x


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def rank_groups(size: int):
    """Process groups of `size` consecutive ranks (every rank creates every group, as torch
    requires); returns this rank's."""
    mine = None
    for first in range(0, get_world_size(), size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= get_rank() < first + size:
            mine = group
    return mine


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on any (a collective: every rank must call it)."""
    if get_world_size() == 1:
        return flag
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (for logging; no gradient)."""
    if get_world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / get_world_size()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics span all ranks; any device, 2-D or 4-D input.

    torch's SyncBatchNorm runs only on GPUs; this one uses a differentiable all-reduce so that
    CPU (gloo) runs and tests compute exactly the statistics of the whole global batch.
    Assumes the same batch size on every rank (the sampler guarantees it).
    """

    process_group = None  # the ranks whose batches are normalised together (None: all)

    def _check_input_dim(self, x):
        if x.dim() not in (2, 4):
            raise ValueError(f"GlobalBatchNorm expects 2-D or 4-D input, got {x.dim()}-D")

    def forward(self, x):
        if not self.training or get_world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] if x.dim() == 2 else [0, 2, 3]
        shape = (1, -1) if x.dim() == 2 else (1, -1, 1, 1)
        world = dist.get_world_size(self.process_group)
        count = x.numel() // x.shape[1] * world
        # Each rank's mean and variance (two passes, as torch's BN), gathered and combined by
        # the parallel-variance formula: E[x^2] - E[x]^2 in one pass cancels in float32 and
        # put the gradients 1e-3 off a single process's on AVX2 CPUs. At least float32 (a
        # float64 input stays float64).
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        var_local, mean_local = torch.var_mean(xf, dims, correction=0)
        stats = gather_with_grad(torch.stack([mean_local, var_local]).unsqueeze(0),
                                 self.process_group)  # (ranks, 2, channels)
        mean = stats[:, 0].mean(0)
        var = (stats[:, 1] + (stats[:, 0] - mean) ** 2).mean(0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / max(count - 1, 1),
                                                  alpha=m)
                self.num_batches_tracked += 1
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device_type: str, group=None,
                           skip=()) -> nn.Module:
    """Every BatchNorm of `module` (but those in the subtrees `skip`) normalising over the
    batches of the ranks of `group` (None: all ranks): torch's SyncBatchNorm on CUDA,
    GlobalBatchNorm elsewhere (the same statistics, slower)."""
    skip = {id(m) for m in skip}

    def convert(m):
        if id(m) in skip:
            return m
        out = m
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(
                m, (GlobalBatchNorm, nn.SyncBatchNorm)):
            if device_type == "cuda":
                out = nn.SyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine,
                                       m.track_running_stats, process_group=group)
            else:
                out = GlobalBatchNorm(m.num_features, m.eps, m.momentum, m.affine,
                                      m.track_running_stats)
                out.process_group = group
            if m.affine:
                out.weight, out.bias = m.weight, m.bias
            if m.track_running_stats:
                out.running_mean, out.running_var = m.running_mean, m.running_var
                out.num_batches_tracked = m.num_batches_tracked
        for name, child in m.named_children():
            out.add_module(name, convert(child))
        return out

    return convert(module)
