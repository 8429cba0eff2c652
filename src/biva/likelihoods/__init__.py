"""Observation models p(x | z): Bernoulli, discretized logistic mixture, Gaussian, categorical."""

from biva.likelihoods.base import Likelihood
from biva.likelihoods.bernoulli import Bernoulli
from biva.likelihoods.categorical import Categorical
from biva.likelihoods.gaussian import Gaussian
from biva.likelihoods.logistic_mixture import DiscretizedLogisticMixture

__all__ = ["Likelihood", "Bernoulli", "Categorical", "Gaussian", "DiscretizedLogisticMixture",
           "build_likelihood"]


def build_likelihood(name: str, *, n_mix: int = 10, bits: int = 8, num_classes: int = 256,
                     fixed_std: float = 0.0) -> Likelihood:
    """Construct a likelihood by config name (see ``biva.config.ModelConfig.likelihood``)."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "discretized_logistic":
        return DiscretizedLogisticMixture(n_mix=n_mix, bits=bits)
    if name == "gaussian":
        return Gaussian(fixed_std=fixed_std)
    if name == "categorical":
        return Categorical(num_classes)
    raise ValueError(f"unknown likelihood {name!r}")
