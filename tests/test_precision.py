"""What a step computes in on the CPU at hand (ssl2det/precision.py, pretrain/engine/arithmetic.py):
bf16 autocast only where the CPU computes bf16, float32 elsewhere unless SOLVER.AMP.FORCE; the
memory format measured or kept; both recorded, and a resume on another kind of CPU said.

An AVX2-only CPU is seen on a bigger one by capping oneDNN (ONEDNN_MAX_CPU_ISA=AVX2, which alone
decides how fast bf16 convolutions are: docs/performance.md), set in the environment of the
process that trains, as a user's machine would have it."""

import json
import os

import pytest
import torch

from conftest import REPO
from helpers import run

DEMO = REPO / "configs" / "demo" / "simclr_r50_small.yaml"
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
#: the demo's config (bf16 asked for) on a tiny ResNet-18
TINY = ["MODEL.ARCH", "resnet18", "INPUT.SIZE", "16", "SOLVER.BATCH_SIZE", "8",
        "DATA.NUM_WORKERS", "0", "KNN.ENABLED", "False", "LOG_PERIOD", "1",
        "SOLVER.CHECKPOINT_PERIOD", "2", "METHOD.PROJECTOR.HIDDEN_DIM", "64"]


def _conv_dtype_of_a_step(overrides, tmp_path):
    """The dtype of the first convolution's output in one training step built from the demo's
    config, as build_trainer builds it."""
    from detectron2.utils.events import EventStorage

    from pretrain.config import load_config
    from pretrain.engine.run import build_trainer

    cfg = load_config(str(DEMO), TINY + ["SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path)]
                      + overrides)
    trainer = build_trainer(cfg)
    seen = []
    trainer.method.encoder.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.iter = 0
    with EventStorage(0) as trainer.storage:
        trainer.run_step()
    return seen[0], trainer.precision


def test_a_cpu_without_native_bf16_trains_in_float32_unless_told(monkeypatch, tmp_path):
    # the demo asks for bf16 autocast; with oneDNN capped at AVX2 (read as the process starts,
    # so here the decision is what is checked), the step must run in float32
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    dtype, precision = _conv_dtype_of_a_step([], tmp_path / "plain")
    assert dtype == torch.float32 and precision.name == "float32"
    assert "no native bfloat16" in precision.why and "SOLVER.AMP.FORCE" in precision.why
    dtype, precision = _conv_dtype_of_a_step(["SOLVER.AMP.FORCE", "True"], tmp_path / "forced")
    assert dtype == torch.bfloat16 and "FORCE True" in precision.why


def test_precision_and_isa_follow_the_hardware(monkeypatch):
    from ssl2det.precision import choose_precision, cpu_isa

    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # the machine as it is
        monkeypatch.delenv(name, raising=False)
    cpu = torch.device("cpu")
    native = choose_precision(cpu, True, "bfloat16")
    # whatever this machine is, bf16 is granted exactly where the CPU has the instructions
    assert (native.autocast == torch.bfloat16) == (cpu_isa() in ("AMX", "AVX512_BF16"))
    assert choose_precision(cpu, False, "bfloat16").name == "float32"
    for cap in ("AVX2", "avx2", "AVX512_CORE"):  # oneDNN's names, upper or lower case
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert cpu_isa() in ("AVX2", "AVX512", "DEFAULT", "SVE256", "NO AVX")
        assert choose_precision(cpu, True, "bfloat16").autocast is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "about 25x" in choose_precision(cpu, True, "bfloat16").why
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "NOT_AN_ISA")  # oneDNN ignores it; so do we
    assert choose_precision(cpu, True, "bfloat16").autocast == native.autocast


def test_memory_format_as_given_or_by_the_rule(monkeypatch):
    """True/False as given; unset, a rule of the device, not a measurement (two runs of one
    config on a loaded machine must compute alike)."""
    from ssl2det.precision import Precision, choose_channels_last, cpu_isa

    cpu = torch.device("cpu")
    assert choose_channels_last(cpu, True) == (True, "MODEL.CHANNELS_LAST True")
    assert choose_channels_last(cpu, False)[0] is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert [choose_channels_last(cpu, None, Precision(), px)[0] for px in (8, 16, 32, 56)] == [
        False, False, True, True]
    assert choose_channels_last(cpu, None, Precision(torch.bfloat16), 8)[0] is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # AVX-512 without bf16, where the
    assert choose_channels_last(cpu, None, Precision(), 8)[0] is (  # CPU (and ATen) have it
        cpu_isa() == "AVX512")


@pytest.mark.slow
def test_a_run_resumed_on_a_cpu_without_bf16_says_so_and_records_both(tmp_path):
    """Iterations 0-1 in bf16 (forced, so that any CPU can play the first machine), resumed
    under an AVX2 view without FORCE: float32 from iteration 2, a warning naming both, and
    scale.json's two entries; resumed again alike, no third."""
    out = tmp_path / "run"
    base = ["python", "-m", "pretrain", "--config-file", DEMO, *TINY, "OUTPUT_DIR", out]
    first = run(base + ["SOLVER.MAX_ITER", "2", "SOLVER.AMP.FORCE", "True"],
                env={**os.environ, **AVX2_ONLY})
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run(base + ["SOLVER.MAX_ITER", "4", "--resume"], env={**os.environ, **AVX2_ONLY})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # no warning a user cannot act on in a pretraining's output (DDP's, torch.jit's: round five)
    assert "Warning:" not in first.stdout + first.stderr + resumed.stderr, resumed.stderr[-3000:]
    assert "iterations 0-1 ran in bfloat16 autocast on cpu AVX2; from iteration 2 this run " \
           "computes in float32 on cpu AVX2" in resumed.stdout
    history = json.loads((out / "scale.json").read_text())["arithmetic"]
    assert [(h["from_iteration"], h["precision"]) for h in history] == [
        (0, "bfloat16 autocast"), (2, "float32")]
    again = run(base + ["SOLVER.MAX_ITER", "6", "--resume"], env={**os.environ, **AVX2_ONLY})
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(json.loads((out / "scale.json").read_text())["arithmetic"]) == 2


def test_stage_two_on_a_cpu_trains_in_float32_and_says_so():
    """detectron2's AMPTrainer asserts a GPU: a config asking for AMP on a CPU machine becomes
    float32, in one line, instead of an assertion traceback."""
    from transfer.config import adapt_to_machine, merge_config
    from transfer.metrics import precision_of

    cfg = merge_config(str(REPO / "configs/demo/voc_raccoon_faster_rcnn.yaml"),
                       ["SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "cpu"])
    changes = adapt_to_machine(cfg)
    assert cfg.SOLVER.AMP.ENABLED is False
    assert any(c.startswith("SOLVER.AMP.ENABLED True -> False") for c in changes)
    assert precision_of(cfg)["precision"] == "float32"
    assert precision_of(cfg)["device"].startswith("cpu ")
