"""Models: the BIVA hierarchy and its ablations, the VDVAE- and NVAE-style hierarchies, and an
exactly solvable reference model."""

from ..config import ModelConfig
from .base import HierarchyOutput, LatentHierarchy
from .hierarchy import VARIANT_FLAGS, HierarchicalVAE
from .linear_gaussian import LinearGaussianHierarchy
from .topdown import TopDownVAE


def build_hierarchy(config: ModelConfig) -> LatentHierarchy:
    """The unsupervised model ``config.variant`` names: :class:`TopDownVAE` for "vdvae" and
    "nvae", :class:`HierarchicalVAE` for the BIVA family."""
    return TopDownVAE(config) if config.topdown else HierarchicalVAE(config)


__all__ = ["HierarchicalVAE", "HierarchyOutput", "LatentHierarchy", "LinearGaussianHierarchy",
           "TopDownVAE", "VARIANT_FLAGS", "build_hierarchy"]
