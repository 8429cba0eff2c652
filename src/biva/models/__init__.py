"""Models: the BIVA hierarchy and its ablations (LVAE+, LVAE, VAE), the VDVAE- and NVAE-style
hierarchies, the semi-supervised BIVA, the text models, a 2-D MLP variant and an exactly
solvable linear-Gaussian reference model. ``build_hierarchy(config)`` builds any of the image
models from a :class:`~biva.config.ModelConfig`."""

from biva.config import ConfigError, ModelConfig
from biva.models.base import HierarchyOutput, LatentHierarchy
from biva.models.hierarchy import (
    HIERARCHY_VARIANTS,
    BottomUp,
    BottomUpLayer,
    HierarchicalVAE,
    TopDownLayer,
    Variant,
)
from biva.models.latents import Decoding, Encoding, GroupPosterior
from biva.models.linear_gaussian import LinearGaussianHierarchy
from biva.models.semi_supervised import SemiSupervisedBIVA
from biva.models.topdown import TopDownVAE


def build_hierarchy(config: ModelConfig, num_classes: int | None = None, **ssl
                    ) -> LatentHierarchy:
    """The model ``config`` describes: :class:`TopDownVAE` for "vdvae" and "nvae",
    :class:`HierarchicalVAE` for the BIVA family, and :class:`SemiSupervisedBIVA` when
    ``num_classes`` is given (``ssl``: its alpha, objective, n_labelled, n_unlabelled).

    The one model factory of this layer; a run directory's model is built by
    :func:`biva.runs.build_model`, which reads these arguments from the run."""
    if num_classes:
        if config.topdown:
            raise ConfigError(f"model.variant: semi-supervised models are built on the BIVA "
                              f"family (vae, lvae, lvae+, biva), found {config.variant!r}")
        return SemiSupervisedBIVA(config, num_classes, **ssl)
    if ssl:
        raise ValueError(f"{sorted(ssl)}: semi-supervised settings without num_classes")
    return TopDownVAE(config) if config.topdown else HierarchicalVAE(config)


__all__ = [
    "HierarchicalVAE",
    "HierarchyOutput",
    "LatentHierarchy",
    "LinearGaussianHierarchy",
    "SemiSupervisedBIVA",
    "TopDownVAE",
    "HIERARCHY_VARIANTS",
    "BottomUp",
    "BottomUpLayer",
    "TopDownLayer",
    "Decoding",
    "Encoding",
    "GroupPosterior",
    "Variant",
    "build_hierarchy",
]
