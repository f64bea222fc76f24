from .heads import mlp
from .resnet import ResNetEncoder

__all__ = ["ResNetEncoder", "mlp"]
