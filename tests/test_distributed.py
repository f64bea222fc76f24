"""Two gloo processes on the CPU, each with half the batch, get the gradients of one process
holding the whole batch: the cross-rank gathers and the synchronised BN are exact."""

import re

import pytest
import torch

from ddp_helpers import distributed_grads, one_step_grads


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "barlow", "byol"])
def test_two_processes_give_the_single_process_gradients(method, tmp_path):
    # In float64 both sides agree to its rounding (about 3e-14 here) on every CPU. In float32
    # the sums' order differs between one process and two, and the size of that difference
    # with it: it passed on AVX-512 and failed on AVX2 before GlobalBatchNorm's variance was
    # made stable (E[x^2] - E[x]^2 was 1e-3 off there; ~1e-5 now), so float32 cannot say exact.
    single = one_step_grads(method, dtype=torch.float64)
    double = distributed_grads(method, 2, str(tmp_path), dtype=torch.float64)
    assert single.keys() == double.keys()
    assert any(k.startswith("encoder.layer4") for k in single)
    largest = max(g.norm() for g in single.values())
    for name in single:
        # a floor for gradients that are zero up to rounding (the bias before Barlow's BN)
        error = (double[name] - single[name]).norm()
        assert error <= 1e-10 * single[name].norm() + 1e-12 * largest, \
            f"{name}: gradient error {error:.2e}, norm {single[name].norm():.2e}"


def test_the_placement_reader_reads_torchrun_slurm_and_nothing():
    from ssl2det.placement import SLURM_PORT_BASE, placement

    torchrun = placement({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                          "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1", "MASTER_ADDR": "10.0.0.1",
                          "MASTER_PORT": "29400"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.node_rank,
            torchrun.nodes, torchrun.dist_url, torchrun.launcher) == (
        3, 4, 1, 1, 2, "tcp://10.0.0.1:29400", "torchrun")
    slurm = placement({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0",
                       "SLURM_NODEID": "1", "SLURM_NNODES": "2", "SLURM_JOB_ID": "20123",
                       "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURMD_NODENAME": "gpu08"})
    assert (slurm.rank, slurm.world_size, slurm.node_rank, slurm.nodes, slurm.node) == (
        2, 4, 1, 2, "gpu08")
    assert (slurm.master_addr, slurm.master_port) == ("gpu07", SLURM_PORT_BASE + 123)
    # torchrun inside a SLURM job: torchrun's variables say where the process stands
    assert placement({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "RANK": "1",
                      "WORLD_SIZE": "2"}).launcher == "torchrun"
    alone = placement({})
    assert (alone.rank, alone.world_size, alone.launcher) == (0, 1, "none")


def test_a_forced_interface_without_an_address_is_one_line_before_any_group_forms():
    """DIST.SOCKET_IFNAME nosuch0 printed gloo's traceback of 127 lines per rank, although the
    address lookup had already found nothing."""
    from ssl2det.distributed import UnreachableMasterError, choose_interface

    with pytest.raises(UnreachableMasterError, match=r"the network interface nosuch0 \(DIST"
                                                     r"\.SOCKET_IFNAME / launch\.socket_ifname\)"
                                                     r" has no IPv4 address here; this node has: "
                                                     r".*lo \(127\.0\.0\.1\)"):
        choose_interface("127.0.0.1", 29500, 0, forced="nosuch0")


@pytest.mark.parametrize("other", ["holds the port", "closes each connection", pytest.param(
    "says nothing", marks=pytest.mark.slow)])  # (slow: it waits out a time-out)
def test_a_port_another_program_holds_is_one_line_not_a_traceback(other, monkeypatch):
    """MASTER_PORT held by something that is not this run's store. Rank 0 cannot listen there
    (torch: a traceback). Rank 1 meets a program that closes each connection: known at once,
    by the probe (torch: a stream of its store's warnings, then a traceback); or one that
    accepts and says nothing, as a store would: torch's client then waited far past its
    time-out, so the rank gives up after twice DIST.TIMEOUT_S and 5 s (a process of its own
    here: it exits from a thread). One line naming the rank, the address and what to change."""
    import socket
    import subprocess
    import sys
    import threading

    from conftest import REPO
    from ssl2det.distributed import UnreachableMasterError, init_distributed

    program = socket.socket()
    program.bind(("127.0.0.1", 0))
    program.listen()
    port, held = program.getsockname()[1], []

    def serve():
        while True:
            try:
                connection = program.accept()[0]
            except OSError:  # closed at the test's end
                return
            if other == "closes each connection":
                connection.close()
            else:
                held.append(connection)
    threading.Thread(target=serve, daemon=True).start()
    rank = 0 if other == "holds the port" else 1
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (("SLURM_PROCID", rank), ("SLURM_NTASKS", 2), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", port), ("GLOO_SOCKET_IFNAME", "lo"),
                        ("NCCL_SOCKET_IFNAME", "lo")):
        monkeypatch.setenv(name, str(value))
    try:
        if other == "says nothing":
            rank_1 = subprocess.run(
                [sys.executable, "-c", "from ssl2det.errors import one_line_errors; from ssl2det."
                 "distributed import init_distributed; one_line_errors(lambda: init_distributed("
                 "'cpu', timeout_s=1))()"], capture_output=True, text=True, timeout=300, cwd=REPO)
            assert rank_1.returncode == 1 and "Traceback" not in rank_1.stderr, rank_1.stderr
            assert re.search(r"error: rank 1 on \S+ found no process group of this run at "
                             rf"127\.0\.0\.1:{port} within 7 s \(no answer\): another program "
                             "answers there", rank_1.stderr), rank_1.stderr[-2000:]
            return
        said = (r"rank 0 on \S+ cannot listen at port \d+: another program holds it" if rank == 0
                else r"rank 1 on \S+: 127\.0\.0\.1:\d+ is not a torch\.distributed store: it "
                     r"(closes|resets) the connection at once \(another program holds the port\)")
        with pytest.raises(UnreachableMasterError, match=said):
            init_distributed("cpu", timeout_s=3)
    finally:
        program.close()
        for connection in held:
            connection.close()
