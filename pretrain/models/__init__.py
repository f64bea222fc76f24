from .heads import mlp
from .resnet import ResNetEncoder, build_encoder

__all__ = ["ResNetEncoder", "build_encoder", "mlp"]
