"""Whole experiments of the paper, each from one settings object: the ablation (section 4.1,
Table 1 and Figure 2, and the top-down families beside it), complex 2-D densities (appendix D)
and text (appendix E). The anomaly-detection experiment is :mod:`biva.ood.experiment`."""
