"""Stand-in for detectron2's compiled extension ``detectron2._C``.

Installed as ``detectron2/_C.py`` by ``tools/install/detectron2_fallback.py`` when no compiled
detectron2 is available. Faster/Mask R-CNN with R50-C4/FPN never call the compiled module
(ROIAlign and NMS come from torchvision.ops); only deformable convolution, rotated boxes and the
fast COCO evaluator do. Those raise a clear error instead of an ImportError at import time.
"""

#: Marks this module as the project's stand-in; `ssl2det.environment` and the installer read it.
PROJECT_FALLBACK = True


def get_compiler_version():
    return "none (fallback build without the compiled extension)"


def get_cuda_version():
    return "none (fallback build without the compiled extension)"


def has_cuda():
    return False


class _NeedsCompiledDetectron2:
    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(
            f"detectron2._C.{self._name} needs the compiled detectron2 extension, and this "
            "environment has the fallback build (pure Python). Deformable convolution, rotated "
            "boxes and the fast COCO evaluator are not available; use COCOEvaluator(..., "
            "use_fast_impl=False), or install a compiled detectron2 and re-run `make install`, "
            "which then leaves it alone."
        )


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _NeedsCompiledDetectron2(name)
