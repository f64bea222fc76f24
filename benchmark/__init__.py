"""Throughput of this project against a reference implementation, measured in one run.

    # pretraining: ours vs the same SimCLR built from lightly's parts (same torchvision ResNet,
    # NT-Xent, SimCLR augmentation, optimiser, batch, workers, AMP)
    python -m benchmark pretrain --config-file configs/pretrain/infocl_cifar10_simclr.yaml         DATA.ROOT ../shared/data/cifar10-small/train SOLVER.BATCH_SIZE 128 DATA.NUM_WORKERS 2
    # stage two: tools/train_net.py's trainer vs detectron2's plain DefaultTrainer, same config
    DETECTRON2_DATASETS=../shared/data/detectron2 python -m benchmark detection         --config-file configs/cpu/coco_mask_rcnn_fpn_cpu.yaml

Each side runs in its own process (clean peak memory, no shared thread pools), the sides
alternate --repeats times and the median is reported. Per side: two-view samples/s of the full
training step (loader included), the share of step time spent waiting for data, the step time
of the model alone on synthetic input, and peak memory (GPU: max allocated; CPU: peak RSS of
the main process). The first --warmup iterations are not timed. Prints a table and the ratio
ours / reference; --output writes the numbers as JSON. `--sides ours` measures ours alone (e.g.
MODEL.COMPILE on against a run with it off); `--profile FILE` writes torch.profiler's table of
our training step (the slowest operators first) to FILE.

Modules: steps (the training steps, both stages), loader (the loader alone), archives (the
loader read from ImageNet's archive and from shards, the tar index of 1.28M members), startup
(the file index on 1.28M files), allreduce (rendezvous and gradient all-reduce across ranks), cli
(the command line; tools/benchmark.py).
"""
