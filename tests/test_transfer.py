"""Stage two on the CPU: Mask R-CNN on COCO-format data, Faster R-CNN on VOC-format data
registered from the command line, the semantic head on labels made from COCO polygons; the
protocol configs; the pieces that keep users from silent mistakes."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO

TRAIN_NET = [sys.executable, str(REPO / "tools/train_net.py")]
PROTOCOL_CONFIGS = ["coco_mask_rcnn", "coco_mask_rcnn_c4_1x", "coco_mask_rcnn_fpn_1x",
                    "coco_mask_rcnn_fpn_2x", "voc_faster_rcnn", "voc_semseg"]


def _train_net(args, tmp_path, iterations=2):
    result = subprocess.run(TRAIN_NET + args + ["SOLVER.MAX_ITER", str(iterations),
                                                "DATALOADER.NUM_WORKERS", "0",
                                                "OUTPUT_DIR", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "final metrics" in result.stdout
    return json.loads((tmp_path / "final_metrics.json").read_text()), result.stdout


@pytest.mark.slow
def test_mask_rcnn_fpn_trains_and_reports_box_and_mask_ap(shared_data, tmp_path):
    results, out = _train_net(["--config-file", str(REPO / "configs/cpu/coco_mask_rcnn_fpn_cpu.yaml")],
                              tmp_path)
    for task in ("bbox", "segm"):
        assert 0 <= results[task]["AP"] <= 100 and f"{task}/AP50" in out
    assert (tmp_path / "model_final.pth").is_file()


@pytest.mark.slow
def test_faster_rcnn_c4_on_registered_voc_data_reports_ap50(shared_data, tmp_path):
    voc = str(shared_data / "raccoon-voc")
    results, out = _train_net(
        ["--config-file", str(REPO / "configs/cpu/voc_faster_rcnn_cpu.yaml"),
         "--register-voc", "raccoon_train", voc, "train",
         "--register-voc", "raccoon_test", voc, "test", "--voc-classes", "raccoon",
         "DATASETS.TRAIN", '("raccoon_train",)', "DATASETS.TEST", '("raccoon_test",)',
         "MODEL.ROI_HEADS.NUM_CLASSES", "1"], tmp_path)
    assert 0 <= results["bbox"]["AP50"] <= 100 and "bbox/AP50" in out


@pytest.mark.slow
def test_semantic_head_on_labels_made_from_coco_polygons_reports_miou(shared_data, tmp_path):
    coco = shared_data / "detectron2/coco"
    for split in ("train2017", "val2017"):
        subprocess.run([sys.executable, str(REPO / "tools/coco_to_semseg.py"),
                        str(coco / f"annotations/instances_{split}.json"),
                        str(tmp_path / f"labels_{split}")], check=True, capture_output=True)
    results, out = _train_net(
        ["--config-file", str(REPO / "configs/cpu/semseg_fpn_cpu.yaml"),
         "--register-semseg", "cs_train", str(coco / "train2017"), str(tmp_path / "labels_train2017"),
         "--register-semseg", "cs_val", str(coco / "val2017"), str(tmp_path / "labels_val2017"),
         "DATASETS.TRAIN", '("cs_train",)', "DATASETS.TEST", '("cs_val",)',
         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "81"], tmp_path / "run")
    assert 0 <= results["sem_seg"]["mIoU"] <= 100 and "sem_seg/mIoU" in out


def test_coco_to_semseg_labels_match_the_polygons(shared_data, tmp_path):
    from pycocotools.coco import COCO

    from transfer.semseg_labels import coco_to_semseg

    json_file = str(shared_data / "detectron2/coco/annotations/instances_val2017.json")
    classes = coco_to_semseg(json_file, str(tmp_path))
    coco = COCO(json_file)
    assert classes[0] == "background" and len(classes) == len(coco.cats) + 1
    label_of = {c: i + 1 for i, c in enumerate(sorted(coco.cats))}
    for image in coco.imgs.values():
        label = np.array(Image.open(tmp_path / image["file_name"].replace(".jpg", ".png")))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert set(np.unique(label)) <= {0, 255} | {label_of[a["category_id"]] for a in anns}
        smallest = min(anns, key=lambda a: a["area"])  # drawn last: nothing covers it
        mask = coco.annToMask(smallest) > 0
        assert (label[mask] == label_of[smallest["category_id"]]).all()


def test_semseg_mapper_reads_palette_png_indices_not_grey_levels(tmp_path):
    from detectron2.config import get_cfg

    from transfer.data import SemSegDatasetMapper

    indices = np.array([[0, 5], [15, 255]], dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    png = Image.fromarray(indices, mode="P")
    png.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    png.save(tmp_path / "label.png")
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "image.jpg")
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.RANDOM_FLIP = (32,), 32, "none"
    out = SemSegDatasetMapper(cfg, is_train=True)(
        {"file_name": str(tmp_path / "image.jpg"), "sem_seg_file_name": str(tmp_path / "label.png"),
         "height": 32, "width": 32})
    assert torch.equal(out["sem_seg"], torch.from_numpy(indices).long())


@pytest.mark.parametrize("name", PROTOCOL_CONFIGS)
def test_protocol_configs_use_the_self_supervised_preprocessing(name):
    from detectron2.config import get_cfg

    import transfer.modeling  # noqa: F401

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / f"configs/{name}.yaml"))
    assert cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53]
    assert cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.RESNETS.NORM == "SyncBN"
    if "C4" in cfg.MODEL.ROI_HEADS.NAME or cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone":
        assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm"
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.REFERENCE_WORLD_SIZE == 8


def test_checkpoint_report_tells_missing_heads_from_missing_backbone(tmp_path, caplog):
    import torchvision
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from transfer.convert import convert_state_dict, save_detectron2_weights
    from transfer.checkpoint import TransferCheckpointer
    from transfer.config import adapt_to_machine

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs/cpu/voc_faster_rcnn_cpu.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    adapt_to_machine(cfg)
    model = build_model(cfg)
    assert isinstance(model.roi_heads.res5.norm, torch.nn.BatchNorm2d)  # the extra res5 norm
    conversion = convert_state_dict(torchvision.models.resnet50().state_dict())
    save_detectron2_weights(conversion, str(tmp_path / "good.pkl"))
    broken = dict(conversion.weights)
    broken.pop("res3.0.conv1.weight")
    conversion.weights = broken
    save_detectron2_weights(conversion, str(tmp_path / "broken.pkl"))

    with caplog.at_level(logging.INFO):
        TransferCheckpointer(model).load(str(tmp_path / "good.pkl"))
    assert "head parameters start from scratch" in caplog.text
    assert "roi_heads.box_predictor" in caplog.text and "proposal_generator" in caplog.text
    assert "BACKBONE parameters are missing" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        TransferCheckpointer(model).load(str(tmp_path / "broken.pkl"))
    assert "1 BACKBONE parameters are missing" in caplog.text
    assert "backbone.res3.0.conv1.weight" in caplog.text


@pytest.mark.parametrize("args, message", [
    (["MODEL.WEIGHTS", "/nonexistent/r50.pkl"], "MODEL.WEIGHTS /nonexistent/r50.pkl does not exist"),
    (["--register-voc", "x", "/nonexistent/voc", "train"], "VOC Annotations not found"),
    (["MODEL.NOT_A_KEY", "1"], "Non-existent key: MODEL.NOT_A_KEY"),
])
def test_bad_arguments_get_a_clear_message(args, message, tmp_path):
    cmd = TRAIN_NET + ["--config-file", str(REPO / "configs/cpu/voc_faster_rcnn_cpu.yaml")]
    flags = [a for a in args if a.startswith("--")]
    result = subprocess.run(cmd + (args if flags else ["OUTPUT_DIR", str(tmp_path)] + args),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
