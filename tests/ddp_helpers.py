"""Run one training step of a method in 1 process (whole batch) or W gloo processes (a slice
each, DDP + GlobalBatchNorm), and return the gradients. Used by test_distributed.py."""

import os
import time

import torch
import torch.distributed as dist

from pretrain.config import load_config
from ssl2det.distributed import convert_sync_batchnorm
from pretrain.methods import build_method

TINY = ["MODEL.ARCH", "resnet18", "MODEL.CIFAR_STEM", "True", "INPUT.SIZE", "16",
        "METHOD.PROJECTOR.HIDDEN_DIM", "64", "METHOD.PROJECTOR.OUT_DIM", "32",
        "MODEL.CHANNELS_LAST", "False"]


def batch(n=8, size=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, size, size, generator=g).to(dtype) for _ in range(2)]


def one_step_grads(method_name, rank=0, world=1, dtype=torch.float32):
    cfg = load_config("", TINY + ["METHOD.NAME", method_name])
    torch.manual_seed(0)
    method = build_method(cfg).to(dtype)
    views = batch(dtype=dtype)
    model = method
    if world > 1:
        method = convert_sync_batchnorm(method, "cpu")
        model = torch.nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
        n = views[0].shape[0] // world
        views = [v[rank * n:(rank + 1) * n] for v in views]
    loss = sum(model(views)["losses"].values())
    loss.backward()
    return {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}


def _worker(rank, world, init_file, method_name, out_file, dtype):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        grads = one_step_grads(method_name, rank, world, dtype)
        if rank == 0:
            torch.save(grads, out_file)
    finally:
        dist.destroy_process_group()


def distributed_grads(method_name, world, tmp_dir, dtype=torch.float32):
    torch.set_num_threads(1)
    out = os.path.join(tmp_dir, f"grads_{method_name}.pt")
    torch.multiprocessing.spawn(_worker, args=(world, os.path.join(tmp_dir, "init"),
                                               method_name, out, dtype), nprocs=world)
    return torch.load(out, weights_only=True)


def _nan_skip_worker(rank, world, port, overrides, nan_rank, nan_iteration, out_dir):
    """A real pretraining run (build_trainer: DDP, gloo) whose batch on `nan_rank` is NaN at
    `nan_iteration`; saves the skip count and the final weights of this rank."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from pretrain.engine.run import build_trainer

    trainer = build_trainer(load_config("", overrides))
    clean_batch = trainer._next_batch

    def batch():
        views, labels = clean_batch()
        if rank == nan_rank and trainer.iter == nan_iteration:
            views = [v * float("nan") for v in views]
        return views, labels

    trainer._next_batch = batch
    try:
        trainer.train(0, trainer.max_iter)
        torch.save({"skipped": trainer.skipped_steps, "model": trainer.method.state_dict()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_with_nan_on_one_rank(overrides, port, out_dir, world=2, timeout_s=300):
    context = torch.multiprocessing.spawn(
        _nan_skip_worker, args=(world, port, overrides, 1, 1, out_dir), nprocs=world,
        join=False)
    deadline = time.time() + timeout_s
    while not context.join(timeout=5):
        if time.time() > deadline:
            for p in context.processes:
                p.kill()
            raise TimeoutError("the ranks did not finish: a skipped step left one waiting")
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True)
            for r in range(world)]


def _file_index_worker(rank, world, init_file, root, index_dir, out_dir):
    """Each rank opens the images as a pretraining run does; records whether it listed the
    folder (os.walk) or read the tar headers itself, and what it found."""
    import json

    from pretrain.data import archives, datasets
    from pretrain.data import build as data_build

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        walked = []
        real_walk, real_build = os.walk, archives.TarIndex.build.__func__
        datasets.os.walk = lambda *a, **k: walked.append(a[0]) or real_walk(*a, **k)
        archives.TarIndex.build = classmethod(lambda cls, r: walked.append(r) or real_build(cls, r))
        cfg = load_config("", ["DATA.INDEX_DIR", index_dir, "OUTPUT_DIR", out_dir])
        images = data_build.image_folder(cfg, root)
        samples = [(images.name(k), images.label(k)) for k in range(len(images))]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"walked": len(walked), "samples": samples}, f)
    finally:
        dist.destroy_process_group()


def image_folder_on_ranks(root, index_dir, world, tmp_dir):
    """[{walked, samples}] per rank of image_folder() under `world` gloo processes."""
    import json

    torch.multiprocessing.spawn(_file_index_worker, args=(
        world, os.path.join(tmp_dir, "init"), root, index_dir, tmp_dir), nprocs=world)
    return [json.load(open(os.path.join(tmp_dir, f"rank{r}.json"))) for r in range(world)]


def _image_probe_worker(rank, world, init_file, root, out_dir):
    from pretrain.eval.image_probe import train_probe_on_images
    from pretrain.models import build_encoder

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world)
    try:
        cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "pretrain",
                                       "infocl_imagenet_simclr.yaml"),
                          ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "DATA.NUM_WORKERS", "0",
                           "DATA.FILE_INDEX", "False"])
        torch.manual_seed(0)
        encoder = build_encoder(cfg)
        layer = {}
        import pretrain.eval.image_probe as probe

        real = probe.new_linear_layer

        def keep(*args, **kwargs):
            layer["layer"] = real(*args, **kwargs)
            return layer["layer"]
        probe.new_linear_layer = keep
        result = train_probe_on_images(cfg, encoder, root, root, "", torch.device("cpu"),
                                       epochs=1, batch_size=32)
        if rank == 0:
            torch.save({"losses": result.losses, "last": result.last,
                        "weight": layer["layer"].weight.detach()},
                       os.path.join(out_dir, "probe.pt"))
    finally:
        if world > 1:
            dist.destroy_process_group()


def image_probe_on_ranks(root, world, out_dir):
    """The image probe (1 epoch, 32 px, batch 32, a random ResNet-18) on `world` gloo
    processes: rank 0's losses, last top-1 and final layer weights."""
    torch.set_num_threads(1)
    os.makedirs(out_dir, exist_ok=True)
    torch.multiprocessing.spawn(_image_probe_worker, args=(
        world, os.path.join(out_dir, "init"), root, out_dir), nprocs=world)
    return torch.load(os.path.join(out_dir, "probe.pt"), weights_only=True)


def _bn_group_worker(rank, world, init_file, size, out_dir):
    from ssl2det.distributed import GlobalBatchNorm, rank_groups

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        bn = GlobalBatchNorm(3)
        bn.process_group = rank_groups(size)
        g = torch.Generator().manual_seed(0)
        inputs = [torch.randn(4, 3, 5, 5, generator=g) * (r + 1) for r in range(world)]
        out = bn(inputs[rank])
        group = inputs[rank // size * size:(rank // size + 1) * size]
        reference = torch.nn.functional.batch_norm(torch.cat(group), None, None, training=True)
        reference = reference[(rank % size) * 4:(rank % size + 1) * 4]
        torch.save(bool(torch.allclose(out, reference, atol=1e-5)),
                   os.path.join(out_dir, f"bn{rank}.pt"))
    finally:
        dist.destroy_process_group()


def batch_norm_groups_on_ranks(world, size, out_dir):
    """True when, on `world` gloo processes in groups of `size`, every rank's GlobalBatchNorm
    output is batch norm over its group's images."""
    torch.multiprocessing.spawn(_bn_group_worker, args=(
        world, os.path.join(out_dir, "init"), size, out_dir), nprocs=world)
    return all(torch.load(os.path.join(out_dir, f"bn{r}.pt")) for r in range(world))
