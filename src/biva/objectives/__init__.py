"""Bounds and their units: the importance-weighted bound L_K and L^{>k}_K (vectorized,
chunked), log-weights and their effective sample size, nats <-> bits/dim, and their means over a
data split (:mod:`~biva.objectives.splits`; the semi-supervised classification error in
:mod:`~biva.objectives.classification`), and the training objective of the image hierarchies
(the negative ELBO with free bits and the KL weight, :mod:`~biva.objectives.training`)."""

from biva.objectives.importance import effective_sample_size, importance_weighted_bound, log_weights
from biva.objectives.units import bits_per_dim, nats_from_bits_per_dim

__all__ = ["importance_weighted_bound", "log_weights", "effective_sample_size", "bits_per_dim",
           "nats_from_bits_per_dim"]
