"""Start pretraining on one or more processes and machines (torchrun for several): the
launcher behind tools/pretrain.sh and the pipeline's pretraining stage.

    python -m pretrain.launch CONFIG [--num-gpus N] [--num-procs P] [--num-machines M
        --machine-rank R --dist-url tcp://HOST:PORT] [--resume] [KEY VALUE ...]

Each process runs `python -m pretrain` (pretrain/cli.py). Under SLURM, srun starts the
processes itself: `srun python -m pretrain --config-file ...` (docs/pretrain.md).
"""

import argparse
import os
import sys

from ssl2det.errors import ConfigError, one_line_errors


def launch_command(config, num_gpus=None, num_procs=1, num_machines=1, machine_rank=0,
                   dist_url="", resume=False, opts=()) -> list:
    """The command line that runs pretraining as asked.

    num_gpus: processes per machine, one per GPU (None: every visible GPU; 0: CPU processes,
    `num_procs` of them, with MODEL.DEVICE cpu). One process on one machine runs
    `python -m pretrain` directly (MODEL.DEVICE as configured); more go through torchrun.
    """
    import torch

    visible = torch.cuda.device_count()
    if num_gpus is None:
        num_gpus = visible
    elif num_gpus > visible > 0:
        raise ConfigError(f"--num-gpus {num_gpus}, but this machine has {visible} GPUs")
    elif num_gpus > 1 and visible == 0:
        print(f"no GPU is visible: running {num_gpus} CPU processes (gloo) instead of "
              f"{num_gpus} GPU processes", file=sys.stderr)
        num_gpus, num_procs = 0, num_gpus
    processes = num_gpus if num_gpus > 0 else num_procs
    device = [] if num_gpus > 0 else ["MODEL.DEVICE", "cpu"]
    run = ["-m", "pretrain", "--config-file", str(config), *(["--resume"] if resume else []),
           *map(str, opts), *device]
    if processes == 1 and num_machines == 1:
        return [sys.executable, *run]
    if num_machines == 1 and not dist_url:  # a free port: two runs on one machine never meet
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(processes), *run]
    if not dist_url:
        raise ConfigError(f"--num-machines {num_machines} needs --dist-url tcp://HOST:PORT, "
                          "an address of machine 0 that every machine reaches")
    host, _, port = dist_url.removeprefix("tcp://").rpartition(":")
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--nnodes", str(num_machines), "--node_rank", str(machine_rank),
            "--master_addr", host, "--master_port", port, *run]


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="pretraining YAML config")
    parser.add_argument("--num-gpus", type=int, default=None, metavar="N",
                        help="processes per machine, one per GPU (default: all visible GPUs; "
                             "0 = CPU processes)")
    parser.add_argument("--num-procs", type=int, default=1, metavar="P",
                        help="with --num-gpus 0 or no GPU: CPU processes per machine (gloo)")
    parser.add_argument("--num-machines", type=int, default=1, metavar="M")
    parser.add_argument("--machine-rank", type=int, default=0, metavar="R",
                        help="this machine's rank, 0 .. M-1")
    parser.add_argument("--dist-url", default="", metavar="tcp://HOST:PORT",
                        help="multi-node: reachable on machine 0 (one machine: a free port)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR/last_checkpoint")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides")
    return parser


@one_line_errors
def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)
    cmd = launch_command(args.config, args.num_gpus, args.num_procs, args.num_machines,
                         args.machine_rank, args.dist_url, args.resume, args.opts)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
