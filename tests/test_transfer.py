"""Stage two on the CPU: Mask R-CNN on COCO-format data, Faster R-CNN on VOC-format data
registered from the command line, the semantic head on labels made from COCO polygons; the
protocol configs; the pieces that keep users from silent mistakes."""

import json
import logging
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO

TRAIN_NET = [sys.executable, str(REPO / "tools/train_net.py")]
PROTOCOL_CONFIGS = ["coco_mask_rcnn", "coco_mask_rcnn_c4_1x", "coco_mask_rcnn_fpn_1x",
                    "coco_mask_rcnn_fpn_2x", "voc_faster_rcnn", "voc_semseg", "voc_semseg_fpn"]


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


@pytest.fixture(scope="module")
def coco_semseg_labels(shared_data, tmp_path_factory):
    """Label PNGs made from the shared COCO polygons by tools/coco_to_semseg.py."""
    labels = tmp_path_factory.mktemp("coco_semseg")
    for split in ("train2017", "val2017"):
        subprocess.run([sys.executable, str(REPO / "tools/coco_to_semseg.py"),
                        str(shared_data / f"detectron2/coco/annotations/instances_{split}.json"),
                        str(labels / split)], check=True, capture_output=True)
    return labels


@pytest.mark.slow
@pytest.mark.parametrize("config", ["voc_semseg_cpu", "semseg_fpn_cpu"])
def test_semantic_head_on_labels_made_from_coco_polygons_reports_miou(config, shared_data,
                                                                     coco_semseg_labels, tmp_path):
    coco = shared_data / "detectron2/coco"
    results, out = _train_net(
        ["--config-file", str(REPO / f"configs/cpu/{config}.yaml"),
         "--register-semseg", "cs_train", str(coco / "train2017"), str(coco_semseg_labels / "train2017"),
         "--register-semseg", "cs_val", str(coco / "val2017"), str(coco_semseg_labels / "val2017"),
         "DATASETS.TRAIN", '("cs_train",)', "DATASETS.TEST", '("cs_val",)',
         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "81"], tmp_path / "run")
    assert 0 <= results["sem_seg"]["mIoU"] <= 100 and "sem_seg/mIoU" in out


def test_semseg_training_images_are_scaled_then_cropped_to_the_crop_size(shared_data,
                                                                          coco_semseg_labels):
    """MoCo's protocol through the real training loader: every input is the 513 px crop (detectron2
    alone would crop before resizing, and VOC-sized images would be trained whole), the image
    scaled by 0.5-2.0 first, the label padded with the ignore value where the crop overhangs."""
    from transfer.config import get_cfg
    from transfer.data import register_semseg
    from transfer.trainer import Trainer

    coco = shared_data / "detectron2/coco"
    if "cs_crop" not in __import__("detectron2.data").data.DatasetCatalog.list():
        register_semseg("cs_crop", str(coco / "val2017"), str(coco_semseg_labels / "val2017"),
                        ["background"] + ["c"] * 80)
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs/voc_semseg.yaml"))
    cfg.merge_from_list(["DATASETS.TRAIN", '("cs_crop",)', "SOLVER.IMS_PER_BATCH", "4",
                         "DATALOADER.NUM_WORKERS", "0", "INPUT.RANDOM_SCALE", "(0.25, 0.25)"])
    batch = next(iter(Trainer.build_train_loader(cfg)))
    for sample in batch:  # COCO-sized images at scale 0.25 (about 160 x 120): padded to 513
        assert sample["image"].shape == (3, 513, 513) and sample["sem_seg"].shape == (513, 513)
        h, w = round(sample["height"] * 0.25), round(sample["width"] * 0.25)
        assert (sample["sem_seg"][h:, :] == 255).all() and (sample["sem_seg"][:, w:] == 255).all()
        assert (sample["image"][:, h:, :] == round(sum(cfg.MODEL.PIXEL_MEAN) / 3)).all()
    assert any((sample["sem_seg"][:100, :100] != 255).any() for sample in batch)


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
    from transfer.config import get_cfg  # detectron2's keys and this project's

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


def test_new_heads_are_named_and_a_body_that_does_not_fit_is_refused(tmp_path, caplog):
    import torchvision
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import transfer.modeling  # noqa: F401  (registers the project's heads)
    from ssl2det.io import CheckpointError
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
    with pytest.raises(CheckpointError, match=r"missing 1 body tensors, e\.g\. "
                                              r"backbone\.res3\.0\.conv1\.weight"):
        TransferCheckpointer(model).load(str(tmp_path / "broken.pkl"))
    # a ResNet-18 under this ResNet-50 config: stopped, the shapes named
    save_detectron2_weights(convert_state_dict(torchvision.models.resnet18().state_dict()),
                            str(tmp_path / "r18.pkl"))
    with pytest.raises(CheckpointError, match=r"do not fit this model's ResNet body \(other "
                                              r"shapes: backbone\.res2\.0\.conv1\.weight"):
        TransferCheckpointer(model).load(str(tmp_path / "r18.pkl"))


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


def _voc_model(num_classes):
    from detectron2.modeling import build_model

    import transfer.modeling  # noqa: F401  (registers the project's heads)
    from transfer.config import adapt_to_machine, get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs/cpu/voc_faster_rcnn_cpu.yaml"))
    cfg.MODEL.DEVICE, cfg.MODEL.ROI_HEADS.NUM_CLASSES = "cpu", num_classes
    adapt_to_machine(cfg)
    return build_model(cfg)


@pytest.mark.slow
def test_eval_only_refuses_weights_that_do_not_fit_and_fine_tuning_names_skipped_shapes(
        tmp_path, caplog):
    from transfer.checkpoint import TransferCheckpointer

    TransferCheckpointer(_voc_model(1), str(tmp_path)).save("model_final")
    result = subprocess.run(TRAIN_NET + [
        "--config-file", str(REPO / "configs/cpu/voc_faster_rcnn_cpu.yaml"), "--eval-only",
        "--register-voc", "raccoon_test", str(REPO / "datasets/raccoon_small"), "test",
        "--voc-classes", "raccoon,a,b", "DATASETS.TEST", '("raccoon_test",)',
        "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"),
        "OUTPUT_DIR", str(tmp_path / "eval")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "does not fit this model" in result.stderr
    assert "roi_heads.box_predictor.cls_score.weight (2, 2048) vs (4, 2048)" in result.stderr

    # fine-tuning from the same weights: the new head is expected, and named, not hidden
    with caplog.at_level(logging.INFO):
        TransferCheckpointer(_voc_model(3)).load(str(tmp_path / "model_final.pth"))
    assert "were NOT loaded, their shapes differ" in caplog.text
    assert "roi_heads.box_predictor.cls_score.weight (2, 2048) vs (4, 2048)" in caplog.text


@pytest.mark.slow
def test_fewer_processes_than_the_protocol_are_said_out_loud(tmp_path):
    """A protocol config for 2 GPUs on one process: detectron2 rescales batch, lr and schedule;
    precise BN is rescaled too, the config run is written out, final_metrics.json records world
    size and batch, and one warning says what differs (images per batch-norm step)."""
    voc = tmp_path / "voc"
    (voc / "ImageSets/Main").mkdir(parents=True)
    for sub in ("Annotations", "JPEGImages"):
        (voc / sub).symlink_to(REPO / "datasets/raccoon_small" / sub)
    ids = (REPO / "datasets/raccoon_small/ImageSets/Main/test.txt").read_text().split()
    (voc / "ImageSets/Main/test.txt").write_text("\n".join(ids[:4]) + "\n")
    out = tmp_path / "run"
    result = subprocess.run(TRAIN_NET + [
        "--config-file", str(REPO / "configs/cpu/voc_faster_rcnn_cpu.yaml"),
        "--register-voc", "raccoon_train", str(REPO / "datasets/raccoon_small"), "train",
        "--register-voc", "mini_test", str(voc), "test", "--voc-classes", "raccoon",
        "DATASETS.TRAIN", '("raccoon_train",)', "DATASETS.TEST", '("mini_test",)',
        "MODEL.ROI_HEADS.NUM_CLASSES", "1", "SOLVER.REFERENCE_WORLD_SIZE", "2",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()",
        "TEST.PRECISE_BN.NUM_ITER", "1", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST",
        "128", "INPUT.MAX_SIZE_TEST", "160", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "4",
        "OUTPUT_DIR", str(out)],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    # no warning a user cannot act on (deprecations of dependencies' code: ssl2det/__init__.py)
    assert not re.search(r"\w+Warning:", result.stdout + result.stderr), result.stderr[-3000:]
    from transfer.config import get_cfg

    effective = get_cfg()
    effective.merge_from_file(str(out / "config_effective.yaml"))
    assert (effective.SOLVER.IMS_PER_BATCH, effective.SOLVER.MAX_ITER,
            effective.TEST.PRECISE_BN.NUM_ITER) == (2, 2, 2)
    run = json.loads((out / "final_metrics.json").read_text())["run"]
    assert run == {"world_size": 1, "ims_per_batch": 2, "images_per_process": 2.0,
                   "reference_world_size": 2, "test_images": 4,  # the 4 ids of test.txt
                   "precision": "float32", "device": run["device"]}
    assert run["device"].startswith("cpu ")  # with the instruction set (ssl2det/precision.py)
    assert "batch norm sees 2 images per step instead of 4" in result.stdout + result.stderr


def test_voc_semseg_is_mocos_protocol_value_for_value():
    """configs/voc_semseg.yaml against MoCo's appendix (PASCAL VOC semantic segmentation)."""
    from transfer.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs/voc_semseg.yaml"))
    m, head = cfg.MODEL, cfg.MODEL.SEM_SEG_HEAD
    assert (m.META_ARCHITECTURE, m.BACKBONE.NAME, m.RESNETS.DEPTH, m.RESNETS.RES5_DILATION,
            m.RESNETS.OUT_FEATURES) == ("SemanticSegmentor", "build_resnet_backbone", 50, 2,
                                        ["res5"])
    assert (head.NAME, head.IN_FEATURES, head.CONVS_DIM, head.DILATION, head.NORM,
            head.COMMON_STRIDE, head.NUM_CLASSES, head.IGNORE_VALUE) == (
        "FCNHead", ["res5"], 256, 6, "SyncBN", 16, 21, 255)
    assert cfg.DATASETS.TRAIN == ("voc_2012_sem_seg_train_aug",)
    assert cfg.DATASETS.TEST == ("voc_2012_sem_seg_val",)
    assert tuple(cfg.INPUT.RANDOM_SCALE) == (0.5, 2.0) and cfg.INPUT.RANDOM_FLIP == "horizontal"
    assert cfg.INPUT.CROP.ENABLED and tuple(cfg.INPUT.CROP.SIZE) == (513, 513)
    assert cfg.INPUT.MIN_SIZE_TEST == 0  # inference at the original size
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.WEIGHT_DECAY, s.MAX_ITER, tuple(s.STEPS), s.GAMMA,
            s.WARMUP_ITERS) == (16, 0.003, 0.0001, 30000, (21000, 27000), 0.1, 0)
