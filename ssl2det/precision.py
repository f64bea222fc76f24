"""Which arithmetic a training step runs in on the machine at hand: autocast to a 16-bit type only
where the hardware computes that type, and the memory format that is faster there.

bf16 autocast pays where the device has bf16 arithmetic: CUDA GPUs from Ampere on, CPUs with
AVX512_BF16 or AMX (oneDNN then runs the convolutions in bf16). Elsewhere oneDNN emulates it,
and a ResNet-50 step took 25x as long as in float32 on an AVX2-only CPU (docs/performance.md,
"Precision and memory format per CPU"). So a config's SOLVER.AMP says what a run wants, this
module what it gets; SOLVER.AMP.FORCE runs autocast anyway.

A CPU's instruction set is read as torch and oneDNN will use it: torch's dispatch capability
(ATEN_CPU_CAPABILITY caps it) and oneDNN's (ONEDNN_MAX_CPU_ISA caps it: measured, it alone
decides how fast bf16 convolutions are), so `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`
shows an AVX2 machine's choice on a bigger one.
"""

import os
from dataclasses import dataclass

import torch

# oneDNN's instruction sets in its own order (ONEDNN_MAX_CPU_ISA names one; aliases share a rank)
_ONEDNN_ORDER = {"SSE41": 0, "AVX": 1, "AVX2": 2, "AVX2_VNNI": 3, "AVX2_VNNI_2": 4,
                 "AVX512_CORE": 5, "AVX512_CORE_VNNI": 6, "AVX512_CORE_BF16": 7,
                 "AVX512_CORE_FP16": 8, "AVX10_1_512": 8, "AVX512_CORE_AMX": 9,
                 "AVX10_1_512_AMX": 9, "AVX512_CORE_AMX_FP16": 10, "AVX10_1_512_AMX_FP16": 10}
_AVX512, _BF16, _AMX, _AMX_FP16 = 5, 7, 9, 10

#: What an instruction set makes bf16 autocast cost against float32 (a ResNet-50 training step,
#: measured: docs/performance.md), for the line that says why a run stays in float32.
_EMULATION_COST = {"AVX2": "about 25x the float32 time", "AVX512": "about 1.1x the float32 time"}


def _onednn_cap() -> float:
    """The highest oneDNN instruction set allowed by the environment (inf: no cap; a value
    oneDNN does not know is ignored by oneDNN, so here too)."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return _ONEDNN_ORDER.get(value.strip().upper(), float("inf"))


def _cpu_has(feature: str) -> bool:
    # torch.cpu's probes (cpuinfo) are private; an older or newer torch without them reads as
    # "absent", which errs towards float32
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)
    try:
        return bool(probe()) if probe else False
    except RuntimeError:
        return False


def cpu_isa() -> str:
    """The CPU's instruction set as this process's kernels use it: "AMX", "AVX512_BF16",
    "AVX512", "AVX2", or torch's own name for others ("DEFAULT", "SVE256", ...)."""
    aten = torch.backends.cpu.get_cpu_capability()
    cap = _onednn_cap()
    if _cpu_has("amx_tile") and _cpu_has("avx512_bf16") and cap >= _AMX:
        return "AMX"
    if _cpu_has("avx512_bf16") and cap >= _BF16:
        return "AVX512_BF16"
    if aten == "AVX512":
        return "AVX512" if cap >= _AVX512 else "AVX2"
    return aten


def native_dtype(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `device` computes `dtype` (bfloat16 or float16) in hardware."""
    if device.type == "cuda":
        if dtype == torch.bfloat16:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        return True
    if device.type != "cpu":
        return False
    if dtype == torch.bfloat16:
        return cpu_isa() in ("AMX", "AVX512_BF16")
    return _cpu_has("amx_fp16") and _onednn_cap() >= _AMX_FP16


def describe_device(device: torch.device) -> str:
    """"cpu AVX2", "cuda NVIDIA H100 80GB HBM3": what decides the precision, for logs and
    records."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return f"{device.type} {cpu_isa()}" if device.type == "cpu" else device.type


@dataclass(frozen=True)
class Precision:
    """What a step runs in: `autocast` is the 16-bit type or None (float32); `why` says how it
    was chosen, in one line; `device` is describe_device()."""
    autocast: torch.dtype = None
    why: str = ""
    device: str = ""

    @property
    def name(self) -> str:
        return "float32" if self.autocast is None else \
            f"{str(self.autocast).removeprefix('torch.')} autocast"

    def record(self) -> dict:
        return {"precision": self.name, "device": self.device, "why": self.why}


def choose_precision(device: torch.device, enabled: bool, dtype: str, force: bool = False,
                     key: str = "SOLVER.AMP") -> Precision:
    """Autocast to `dtype` ("bfloat16" / "float16") if `enabled` and the device computes it
    natively, or if `force`; float32 otherwise. `key` names the config block in `why`."""
    where = describe_device(device)
    if not enabled:
        return Precision(None, f"{key}.ENABLED False", where)
    wanted = getattr(torch, dtype)
    if native_dtype(device, wanted):
        return Precision(wanted, f"{key}: {dtype} is native on {where}", where)
    if force:
        return Precision(wanted, f"{key}.FORCE True: {dtype} autocast although {where} has no "
                         f"native {dtype} arithmetic (it is emulated, slower than float32)", where)
    cost = _EMULATION_COST.get(cpu_isa()) if device.type == "cpu" else None
    return Precision(None, f"{key}.ENABLED asks for {dtype}, but {where} has no native {dtype} "
                     "arithmetic (CPUs need AVX512_BF16 or AMX), so the step runs in float32"
                     + (f" ({dtype} autocast would take {cost})" if cost else "")
                     + f"; {key}.FORCE True runs autocast anyway", where)


def choose_channels_last(device: torch.device, wanted, encoder=None, precision=Precision(),
                         shape=(), repeats: int = 3) -> tuple:
    """(channels_last, why): `wanted` True/False as given; None chooses: NHWC on GPUs (tensor
    cores); on a CPU the format in which `encoder` takes a training step (forward and backward
    under `precision`, on inputs of `shape`) sooner, measured here, because which is faster
    depends on the CPU and the size: NHWC won at 224 px on AVX2 and AVX-512, lost at 32-64 px
    with a ResNet-50 stem on AVX2 (docs/performance.md). The encoder is copied: its weights,
    statistics and the global random streams are left as they were."""
    if wanted is not None:
        return bool(wanted), f"MODEL.CHANNELS_LAST {bool(wanted)}"
    if device.type != "cpu":
        return True, f"channels_last on {describe_device(device)}"
    seconds = _step_seconds(encoder, precision, shape, repeats)
    nhwc = seconds[True] < seconds[False]
    return nhwc, (f"{'channels_last' if nhwc else 'contiguous (NCHW)'}: faster on "
                  f"{describe_device(device)} ({precision.name}), measured NCHW "
                  f"{seconds[False]:.3g} s, NHWC {seconds[True]:.3g} s per step of "
                  f"{shape[0]} images at {shape[-1]} px")


def _step_seconds(encoder, precision: Precision, shape, repeats: int) -> dict:
    """{channels_last: the median seconds of a forward and backward pass of a copy of
    `encoder` on a batch of `shape`}, the formats alternating after one untimed step each."""
    import copy
    import statistics
    import time

    model = copy.deepcopy(encoder).train()
    images = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    times = {False: [], True: []}

    def step(nhwc: bool) -> float:
        layout = torch.channels_last if nhwc else torch.contiguous_format
        model.to(memory_format=layout)
        x = images.contiguous(memory_format=layout)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=precision.autocast or torch.bfloat16,
                            enabled=precision.autocast is not None):
            out = model(x)
        out.float().sum().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for nhwc in (False, True):
        step(nhwc)
    for _ in range(repeats):
        for nhwc in (False, True):
            times[nhwc].append(step(nhwc))
    return {k: statistics.median(v) for k, v in times.items()}
