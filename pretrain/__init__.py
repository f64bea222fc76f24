"""Stage one: self-supervised pretraining of ResNet encoders."""

# ssl2det first: its warning filters (dependencies' deprecations no user can act on) must be in
# place before any module here imports detectron2
import ssl2det  # noqa: E402,F401
