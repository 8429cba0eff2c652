"""The kind of images a data set holds, and what follows from it: the likelihood that scores
them and the units their bounds are reported in."""

from __future__ import annotations

from enum import Enum


class DataKind(str, Enum):
    """``BINARY``: pixels in {0, 1}, scored by a Bernoulli likelihood, bounds in nats per image.
    ``EIGHT_BIT``: integer grey or colour levels 0..2^bits - 1 (model input in [-1, 1]), scored
    by a discretized likelihood, bounds in bits/dim.

    A ``str`` subclass: ``DataKind.BINARY == "binary"``, so config files, JSON results and
    older code that spell the kind as a string keep working.
    """

    BINARY = "binary"
    EIGHT_BIT = "8bit"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def for_likelihood(cls, likelihood: str) -> DataKind:
        """The kind of images a model with this ``model.likelihood`` scores: "bernoulli" ->
        BINARY; every other image likelihood (discretized logistic, Gaussian, categorical) ->
        EIGHT_BIT."""
        return cls.BINARY if likelihood == "bernoulli" else cls.EIGHT_BIT

    @property
    def unit(self) -> str:
        """The unit bounds on these images are read in: "nats" (binary) or "bits/dim"."""
        return "nats" if self is DataKind.BINARY else "bits/dim"
