"""Objectives and bounds: ELBO with free bits, L_K, L^{>k}, unit conversions."""

from .importance import effective_sample_size, importance_weighted_bound, log_weights
from .units import bits_per_dim, nats_from_bits_per_dim

__all__ = ["importance_weighted_bound", "log_weights", "effective_sample_size", "bits_per_dim",
           "nats_from_bits_per_dim"]
