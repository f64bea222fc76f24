"""Stage two: detectron2 transfer of pretrained ResNets to detection and segmentation."""

# ssl2det first: its warning filters (dependencies' deprecations no user can act on) must be in
# place before any module here imports detectron2
import ssl2det  # noqa: E402,F401
