"""Evaluation: bounds over splits, image grids."""

from .bounds import evaluate_bounds, evaluation_split, validation_elbo
from .images import make_grid, save_grid, to_display

__all__ = ["evaluate_bounds", "evaluation_split", "validation_elbo", "make_grid", "save_grid",
           "to_display"]
