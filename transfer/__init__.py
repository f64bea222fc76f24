"""Stage two: detectron2 transfer of pretrained ResNets to detection and segmentation."""
