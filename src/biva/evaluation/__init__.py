"""Evaluation of a trained model, beyond the bounds themselves (those are in
:mod:`biva.objectives.splits`):

- :mod:`~biva.evaluation.diagnostics`: training curves, KL per epoch, active units, effective
  sample size of the importance weights;
- :mod:`~biva.evaluation.classification`: raw images to q(y|x), confusion-matrix figures,
  class-conditional samples of a semi-supervised model;
- :mod:`~biva.evaluation.generation`: samples (with a temperature per layer),
  reconstructions and their image files;
- :mod:`~biva.evaluation.plots`, :mod:`~biva.evaluation.style`: figures in one style.

Nothing here reads a run directory (that is :mod:`biva.runs`) or trains.
"""
