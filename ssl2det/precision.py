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


def choose_channels_last(device: torch.device, wanted, precision: Precision = Precision(),
                         first_stage_px: int = 0) -> tuple:
    """(channels_last, why): `wanted` True/False as given; None chooses by a rule, the same on
    every run of a config on one kind of machine (a format measured at start-up would differ
    between runs on a loaded machine, and with it their rounding: two runs of one config must
    give one result). NHWC on GPUs (tensor cores), on CPUs with AVX-512 and wherever 16-bit
    autocast runs; on an AVX2 CPU in float32 only where the first stage's feature maps
    (`first_stage_px`) are 32 px or more: measured, NHWC lost by 5-15% below (a ResNet-50 at
    32-64 px) and won above (224 px: 9%); docs/performance.md."""
    if wanted is not None:
        return bool(wanted), f"MODEL.CHANNELS_LAST {bool(wanted)}"
    where = describe_device(device)
    if device.type != "cpu":
        return True, f"channels_last on {where}"
    if cpu_isa() in ("AMX", "AVX512_BF16", "AVX512") or precision.autocast is not None:
        return True, f"channels_last on {where} ({precision.name})"
    large = first_stage_px >= 32
    return large, (f"{'channels_last' if large else 'contiguous (NCHW)'} on {where} in "
                   f"{precision.name}: first-stage feature maps of {first_stage_px} px")
