"""Models: the BIVA hierarchy and its ablations, and an exactly solvable reference model."""

from .hierarchy import VARIANT_FLAGS, HierarchicalVAE, HierarchyOutput
from .linear_gaussian import LinearGaussianHierarchy

__all__ = ["HierarchicalVAE", "HierarchyOutput", "LinearGaussianHierarchy", "VARIANT_FLAGS"]
