"""Runs: what a run directory is and what can be done with one.

A run directory holds ``config.json`` (the resolved :class:`~biva.config.RunConfig`),
``metrics.jsonl``, ``checkpoints/step_*/`` and ``checkpoints/best/``, ``figures/`` and the
outputs of later commands. This package builds the model a run config describes
(:func:`build_model`), loads a trained one (:func:`load_trained`), evaluates it
(:func:`evaluate_run`), predicts classes with it and writes its HTML report. It sits above
:mod:`biva.training` and :mod:`biva.evaluation`, which never import each other.
"""
