"""Process-group set-up and the collectives the losses need, with correct gradients.

The rule that keeps multi-process training equal to one process on the whole batch: every rank
computes a loss whose *mean over ranks* is the full-batch loss, gathers other ranks' embeddings
with `gather_with_grad` (whose backward sums the gradient from all ranks and returns this rank's
slice), and DDP averages the parameter gradients. tests/test_distributed.py checks it.
"""

import array
import contextlib
import datetime
import errno
import fcntl
import os
import socket
import struct
import sys
import threading
import time

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, UserError
from .placement import node_name, placement

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


#: seconds the probe listens on a new connection: a torch.distributed store says nothing
#: until its client speaks, and does not close it
_SILENCE_S = 0.3


def _probe_master(host: str, port: int, interface: str, rank: int, seconds: float) -> None:
    """A connection to the master within `seconds`: refused is fine (its store may not listen
    yet; the host answered), no answer or no route is an UnreachableMasterError, not a hang.
    A program that greets first (ssh) or closes the connection at once is not a store: torch's
    client would retry it until DIST.TIMEOUT_S; it is an UnreachableMasterError now."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, port),
                                          timeout=max(0.5, deadline - time.monotonic())) as c:
                c.settimeout(_SILENCE_S)
                try:
                    said = c.recv(32)
                    what = f"greets with {said!r}" if said else "closes the connection at once"
                except socket.timeout:
                    return
                except ConnectionResetError:
                    what = "resets the connection at once"
            raise UnreachableMasterError(
                f"rank {rank} on {node_name()}: {host}:{port} is not a torch.distributed store: "
                f"it {what} (another program holds the port); the address must be rank 0's "
                "(MASTER_ADDR and MASTER_PORT; train_net's --dist-url)")
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
        addresses = _interface_addresses()
        address = next((a for a, n in addresses.items() if n == forced), None)
        if address is None:  # (gloo would fail on it with a traceback of a hundred lines)
            have = ", ".join(f"{n} ({a})" for a, n in sorted(addresses.items())) or "none"
            raise UnreachableMasterError(
                f"rank {rank} on {node_name()}: the network interface {forced} (DIST.SOCKET_"
                f"IFNAME / launch.socket_ifname) has no IPv4 address here; this node has: "
                f"{have}")
        interface = forced
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
    """Join the process group its launcher described (ssl2det.placement); returns (rank,
    world, local_rank).

    `timeout_s` bounds every collective: a rank whose peer hangs raises after it instead of
    waiting forever (a peer that dies is noticed at once: its connections close). The network
    interface is chosen first (`choose_interface`; `socket_ifname` forces one); where this
    rank runs is in `this_rank_address()`.
    """
    global _THIS_RANK
    where = placement()
    rank, world, local = where.rank, where.world_size, where.local_rank
    if world > 1 and not is_distributed():
        if not where.master_addr and where.launcher != "torchrun":
            raise ConfigError(f"this process is rank {rank} of {world} ({where.launcher}) but "
                              "nothing says where the ranks meet: run the tasks with srun inside "
                              "the job, or export MASTER_ADDR and MASTER_PORT")
        host, port = where.master_addr or "127.0.0.1", where.master_port or 29500
        for name, value in (("MASTER_ADDR", host), ("MASTER_PORT", str(port))):
            os.environ.setdefault(name, value)  # what init_process_group's env:// reads
        _THIS_RANK = choose_interface(host, port, rank, socket_ifname)
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        with forming_group(host, port, rank, timeout_s):
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
    return rank, world, local


@contextlib.contextmanager
def forming_group(host: str, port, rank: int, timeout_s: float):
    """Around the call that forms a process group at host:port: torch's errors as one line
    (`meeting_failed`), and a bound torch does not keep. Its store client, facing a program
    that accepts connections and says nothing, retries far past its time-out (3 s asked, over
    60 s seen); past twice the time-out (its connection, then its barrier) and 5 s more, this
    rank says so in one line and exits, from a thread, since the call does not return."""
    bound = 2 * timeout_s + 5

    def give_up():
        said = meeting_failed(TimeoutError("no answer"), host, port, rank, bound)
        print(f"error: {said}", file=sys.stderr, flush=True)
        os._exit(said.exit_code)
    watchdog = threading.Timer(bound, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    except dist.DistError as e:
        raise meeting_failed(e, host, port, rank, timeout_s) from None
    finally:
        watchdog.cancel()


def meeting_failed(error, host: str, port, rank: int, timeout_s: float) -> UserError:
    """The one line for a process group that could not form at host:port (torch says it in a
    traceback, after a stream of its store's warnings): rank 0 could not listen there (another
    program holds the port), or another rank met no store of this run there within the
    time-out (another program answers there, or rank 0 never started)."""
    said = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    if "EADDRINUSE" in said or "address already in use" in said.lower():
        return UnreachableMasterError(
            f"rank {rank} on {node_name()} cannot listen at port {port}: another program holds "
            "it (another job's process group, a server); export a free MASTER_PORT (the "
            "pipeline's SLURM jobs choose one themselves)")
    return UnreachableMasterError(
        f"rank {rank} on {node_name()} found no process group of this run at {host}:{port} "
        f"within {timeout_s:g} s ({said}): another program answers there, or rank 0 did not "
        "start (its log says why); the address must be rank 0's (MASTER_ADDR and MASTER_PORT; "
        "train_net's --dist-url)")


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
