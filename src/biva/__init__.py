"""biva: deep hierarchical VAEs (BIVA, LVAE, LVAE+, VAE) in PyTorch."""

from .config import ConfigError, ModelConfig
from .models import HierarchicalVAE, HierarchyOutput, LinearGaussianHierarchy
from .objectives import bits_per_dim, importance_weighted_bound
from .presets import PRESETS, preset

__version__ = "0.1.0"

__all__ = ["ConfigError", "ModelConfig", "HierarchicalVAE", "HierarchyOutput",
           "LinearGaussianHierarchy", "bits_per_dim", "importance_weighted_bound", "PRESETS",
           "preset", "__version__"]
