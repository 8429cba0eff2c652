"""Out-of-distribution detection with the hierarchy's bounds.

- :mod:`~biva.ood.scores`: L^{>k} and the likelihood ratios LLR^{>k} of every image, swept
  over the layer index k in one pass;
- :mod:`~biva.ood.density_of_states`: the density of those statistics on in-distribution
  images (a detector that needs no anomaly examples);
- :mod:`~biva.ood.detector`: :class:`OODDetector`, fitted on validation images, with
  scikit-learn's ``score_samples`` / ``decision_function`` / ``predict``;
- :mod:`~biva.ood.sets`: the out-of-distribution image sets (data sets, folders, synthetic
  shifts) fitted to a model's input;
- :mod:`~biva.ood.metrics`: AUROC, AUPRC, FPR at a TPR, with bootstrap intervals; tables and
  histograms;
- :mod:`~biva.ood.experiment`: the whole experiment of ``biva ood`` as one function.
"""
