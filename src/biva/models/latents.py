"""What the latent API returns: an image's posterior per latent group, and decoded latents.

:meth:`biva.models.LatentHierarchy.encode` gives an :class:`Encoding`;
:meth:`~biva.models.LatentHierarchy.decode`, ``reconstruct`` and ``interpolate`` give a
:class:`Decoding`. Group names are the model's ``group_names``: ``z1 .. zL`` (BIVA:
``z{i}_bu`` and ``z{i}_td`` for i < L), z1 nearest x.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class GroupPosterior:
    """q(z_g | x, z_above) of one latent group: mean and std, and the draw the pass used
    (all (B, *group_shape); the draw equals the mean for an encoding made with
    ``mode="mean"``)."""

    mean: Tensor
    std: Tensor
    draw: Tensor


@dataclass(frozen=True)
class Encoding:
    """Every latent group's posterior for a batch of B images, by group name, and the layer
    (1..L) each group belongs to."""

    groups: dict[str, GroupPosterior]
    layers: dict[str, int]

    def draws(self, min_layer: int = 1) -> dict[str, Tensor]:
        """The draws of the groups at layer ``min_layer`` and above: name -> (B, ...)."""
        return {g: p.draw for g, p in self.groups.items() if self.layers[g] >= min_layer}

    def means(self, min_layer: int = 1) -> dict[str, Tensor]:
        """The posterior means of the groups at layer ``min_layer`` and above."""
        return {g: p.mean for g, p in self.groups.items() if self.layers[g] >= min_layer}

    def of_layer(self, layer: int) -> dict[str, GroupPosterior]:
        """The groups of one stochastic layer (two for BIVA's layers below the top)."""
        return {g: p for g, p in self.groups.items() if self.layers[g] == layer}


@dataclass(frozen=True)
class Decoding:
    """The parameters of p(x|z) (*, P, H, W) and the images they give (*, C, H, W), in
    model-input space (the likelihood's mean, or a draw with ``mode="sample"``)."""

    x_params: Tensor
    images: Tensor
