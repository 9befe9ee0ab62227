"""MNIST architecture-search challenge kit: specs, models, inspector, data, training, search support."""

from .errors import UserError
from .model import build_model, count_params
from .spec import ArchSpec, ConvBlock, load_spec

__all__ = ["ArchSpec", "ConvBlock", "UserError", "build_model", "count_params", "load_spec"]
