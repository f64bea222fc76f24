"""The converter: a converted backbone computes the same features in detectron2, from a
torchvision state dict, from this project's checkpoints and from MoCo's layout; bad input is
refused with a clear message."""

import os
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision

from conftest import REPO
from transfer.convert import ConversionError, convert_checkpoint, save_detectron2_weights


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _torchvision_features(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    res4 = model.layer3(model.layer2(model.layer1(x)))
    return {"res4": res4, "res5": model.layer4(res4)}


def _detectron2_backbone(pkl, depth=50):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if depth < 50:
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    checkpointer = DetectionCheckpointer(backbone)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(pkl)))
    return backbone, incompatible


def _assert_same_features(tv_model, pkl, depth=50):
    backbone, incompatible = _detectron2_backbone(pkl, depth)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = _torchvision_features(tv_model, x), backbone(x)
    for name in ("res4", "res5"):
        assert (got[name] - expected[name]).abs().max().item() < 1e-4, name


def test_torchvision_resnet50_converted_gives_the_same_res4_res5(tmp_path):
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet50())
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    result = subprocess.run([sys.executable, str(REPO / "tools/convert_to_d2.py"),
                             str(tmp_path / "tv.pth"), str(tmp_path / "tv.pkl")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resnet50 backbone" in result.stdout and "265 tensors mapped" in result.stdout
    assert "dropped: fc.* (2)" in result.stdout
    with open(tmp_path / "tv.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["matching_heuristics"] is True and "res5.2.conv3.norm.running_var" in data["model"]
    _assert_same_features(model, tmp_path / "tv.pkl")


@pytest.mark.parametrize("method, ema", [("simclr", False), ("byol", True)])
def test_pretraining_checkpoint_converted_gives_the_same_features(method, ema, tmp_path):
    from pretrain.config import load_config
    from pretrain.engine.checkpoint import AtomicCheckpointer, RunState
    from pretrain.checkpoint_format import run_meta
    from pretrain.methods import build_method

    cfg = load_config("", ["METHOD.NAME", method, "MODEL.ARCH", "resnet50"])
    torch.manual_seed(0)
    m = build_method(cfg)
    encoder = m.target.copies[0] if ema else m.encoder
    _randomise_bn(encoder, seed=3)
    AtomicCheckpointer(m, str(tmp_path), run_state=RunState(run_meta(cfg))).save(
        "model_final", iteration=9)
    conversion = convert_checkpoint(str(tmp_path / "model_final.pth"), ema=ema)
    assert conversion.source == f"ssl2det {method} checkpoint"
    assert conversion.prefix == ("target.copies.0." if ema else "encoder.")
    save_detectron2_weights(conversion, str(tmp_path / "out.pkl"))
    tv = torchvision.models.resnet50()
    tv.load_state_dict({**encoder.state_dict(), **{f"fc.{k}": v for k, v in
                                                   tv.fc.state_dict().items()}})
    _assert_same_features(tv.eval(), tmp_path / "out.pkl")


def test_moco_layout_picks_online_or_momentum_encoder(tmp_path):
    torch.manual_seed(0)
    q, k = _randomise_bn(torchvision.models.resnet18(), 1), _randomise_bn(
        torchvision.models.resnet18(), 2)
    state = {f"module.encoder_q.{n}": v for n, v in q.state_dict().items()}
    state.update({f"module.encoder_k.{n}": v for n, v in k.state_dict().items()})
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state}, tmp_path / "moco.pth.tar")
    for ema, model in ((False, q), (True, k)):
        conversion = convert_checkpoint(str(tmp_path / "moco.pth.tar"), ema=ema)
        assert conversion.arch == "resnet18"
        out = tmp_path / f"moco_{ema}.pkl"
        save_detectron2_weights(conversion, str(out))
        _assert_same_features(model, out, depth=18)


def test_pycontrast_layout_takes_model_ema_with_ema_and_the_tool_names_resnet18_keys(tmp_path):
    """PyContrast keeps the EMA model whole, as a top-level `model_ema` with the online model's
    key names; the converter's hint for basic-block ResNets names every key they need."""
    torch.manual_seed(0)
    online, ema = _randomise_bn(torchvision.models.resnet18(), 1), _randomise_bn(
        torchvision.models.resnet18(), 2)
    torch.save({"model": {f"module.encoder.{n}": v for n, v in online.state_dict().items()},
                "model_ema": {f"module.encoder.{n}": v for n, v in ema.state_dict().items()},
                "epoch": 800}, tmp_path / "pycontrast.pth")
    for use_ema, model in ((False, online), (True, ema)):
        conversion = convert_checkpoint(str(tmp_path / "pycontrast.pth"), ema=use_ema)
        assert ("model_ema" in conversion.source) is use_ema
        save_detectron2_weights(conversion, str(tmp_path / f"pc_{use_ema}.pkl"))
        _assert_same_features(model, tmp_path / f"pc_{use_ema}.pkl", depth=18)
    result = subprocess.run([sys.executable, str(REPO / "tools/convert_to_d2.py"), "--ema",
                             str(tmp_path / "pycontrast.pth"), str(tmp_path / "tool.pkl")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64" in result.stdout
    assert "no C4" in result.stdout


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _write(path, obj=None, raw=None):
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(obj, path)
    return str(path)


def test_bad_inputs_are_refused_clearly(tmp_path):
    good = torchvision.models.resnet50().state_dict()
    torch.save(good, tmp_path / "good.pth")
    whole = (tmp_path / "good.pth").read_bytes()
    wrong_shape = dict(good, **{"layer3.0.conv2.weight": torch.zeros(256, 256, 1, 1)})
    cifar = dict(torchvision.models.resnet18().state_dict(),
                 **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    cases = {
        "text": (_write(tmp_path / "notes.pth", raw=b"hello, not a checkpoint\n"),
                 "cannot be loaded as a PyTorch checkpoint"),
        "truncated": (_write(tmp_path / "cut.pth", raw=whole[: len(whole) // 3]),
                      "cannot be loaded as a PyTorch checkpoint"),
        "code": (_write(tmp_path / "evil.pth", raw=pickle.dumps({"model": _RunsCode()})),
                 "weights_only=True"),
        "no backbone": (_write(tmp_path / "head.pth", {"head.0.weight": torch.zeros(4, 4)}),
                        "no ResNet backbone found"),
        "wrong shape": (_write(tmp_path / "shape.pth", wrong_shape),
                        "shape mismatch: layer3.0.conv2.weight"),
        "cifar stem": (_write(tmp_path / "cifar.pth", cifar), "CIFAR stem"),
        "missing file": (str(tmp_path / "nowhere.pth"), "no such file"),
    }
    for name, (path, message) in cases.items():
        with pytest.raises(ConversionError, match=message):
            convert_checkpoint(path)
    with pytest.raises(ConversionError, match="has no momentum/EMA encoder"):
        convert_checkpoint(str(tmp_path / "good.pth"), ema=True)
    result = subprocess.run([sys.executable, str(REPO / "tools/convert_to_d2.py"),
                             cases["truncated"][0], str(tmp_path / "x.pkl")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr and not (tmp_path / "x.pkl").exists()
