"""detectron2 really works in this environment: Faster R-CNN R50-C4 and Mask R-CNN R50-FPN from
the model zoo train one step and run inference on the CPU on real COCO-format data, and the COCO
evaluator scores the result."""

import math

import pytest
import torch

# Sizes that keep detectron2 fast on 2 CPU cores (../shared/docs/detectron2-install.md); the score
# threshold 0 makes an almost untrained detector still produce detections to evaluate.
CPU_SMOKE = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "DATASETS.TRAIN", ("coco_2017_train",), "DATASETS.TEST", ("coco_2017_val",),
    "INPUT.MIN_SIZE_TRAIN", (256,), "INPUT.MAX_SIZE_TRAIN", 320,
    "INPUT.MIN_SIZE_TEST", 256, "INPUT.MAX_SIZE_TEST", 320,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 200, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
    "TEST.DETECTIONS_PER_IMAGE", 20, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.001, "SOLVER.MAX_ITER", 1,
    "DATALOADER.NUM_WORKERS", 0, "TEST.EVAL_PERIOD", 0,
]

MODELS = {
    # With random weights and the model zoo's frozen BN the ResNet's activations grow so large
    # that the RPN may propose no valid box (R50-C4 always, R50-FPN for some training batches);
    # GroupNorm keeps them in range without pretrained weights.
    "faster_rcnn_R50_C4": ("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
                           ["MODEL.RESNETS.NORM", "GN"], ("bbox",)),
    "mask_rcnn_R50_FPN": ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
                          ["MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN"], ("bbox", "segm")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_step_inference_and_coco_evaluation(name, shared_data, tmp_path):
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data import build_detection_test_loader
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset
    from detectron2.utils.env import seed_all_rng

    config_file, extra, tasks = MODELS[name]
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config_file))
    cfg.merge_from_list(CPU_SMOKE + extra + ["OUTPUT_DIR", str(tmp_path)])
    seed_all_rng(0)  # the model's initialisation and the training batch

    trainer = DefaultTrainer(cfg)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()  # one iteration
    losses = trainer.storage.latest()
    assert math.isfinite(losses["total_loss"][0])
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone") for k in changed)
    assert any(k.startswith("roi_heads") for k in changed)

    model = trainer.model.eval()
    loader = build_detection_test_loader(cfg, "coco_2017_val")
    with torch.no_grad():
        outputs = model(next(iter(loader)))
    instances = outputs[0]["instances"]
    assert len(instances) > 0 and instances.has("pred_boxes") and instances.has("scores")
    if "segm" in tasks:
        assert instances.has("pred_masks")

    evaluator = COCOEvaluator("coco_2017_val", output_dir=str(tmp_path), use_fast_impl=False)
    results = inference_on_dataset(model, loader, evaluator)
    assert set(tasks) <= set(results)
    for task in tasks:
        assert all(math.isfinite(results[task][k]) for k in ("AP", "AP50", "AP75"))
