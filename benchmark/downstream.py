"""`benchmark.py downstream`: what classification transfer costs (pretrain/eval/downstream.py):
frozen-encoder feature extraction in images/s of one core (one thread) at 32 px (a CIFAR-stem
ResNet-18, the infocl protocol) and 224 px (a ResNet-50, kornblith), and the kornblith L2 sweep
(45 fits, then the refit) on random features of --elements x 2,048 with 100 classes."""

import json
import time

import torch

from .machine import describe_machine, machine


def _extraction(arch: str, cifar_stem: bool, size: int, images: int) -> float:
    from pretrain.models import ResNetEncoder

    encoder = ResNetEncoder(arch, cifar_stem).eval()
    batch = torch.randn(min(images, 32), 3, size, size)
    with torch.no_grad():
        encoder(batch[:2])  # (oneDNN's first call)
        start, done = time.process_time(), 0
        while done < images:
            encoder(batch)
            done += len(batch)
    return done / (time.process_time() - start)


def _sweep(n: int, d: int = 2048, classes: int = 100) -> dict:
    from pretrain.eval.downstream import kornblith

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, d, generator=g)
    labels = torch.randint(classes, (n,), generator=g)
    features = (centres[labels] + 3 * torch.randn(n, d, generator=g)).relu()
    cut = int(0.8 * n)
    split = (features[:cut], labels[:cut]), (features[cut:], labels[cut:])
    start = time.perf_counter()
    result = kornblith(*split, (features, labels), split[1], "top1", classes)
    return {"seconds": time.perf_counter() - start, "l2": result["l2"]}


def report_downstream(args) -> None:
    torch.set_num_threads(1)  # per core
    images = args.images
    result = {"images_per_s_per_core": {
        "resnet18_cifar_stem_32px": _extraction("resnet18", True, 32, images),
        "resnet50_224px": _extraction("resnet50", False, 224, max(8, images // 20))}}
    torch.set_num_threads(args.threads)
    result["l2_sweep"] = {"features": [args.elements, 2048], "classes": 100,
                          "threads": args.threads, **_sweep(args.elements)}
    print(describe_machine())
    print(json.dumps(result, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"task": "downstream", **machine(), **result}, f, indent=1)
