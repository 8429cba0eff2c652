"""The brute-force bound checks of ``test_bound_exact.py`` on the top-down families (VDVAE-
and NVAE-style, ``TopDownVAE``): every importance weight, for every k, is an unbiased estimate
of the brute-force p(x), and the tiny models are sensitive enough for that to be sharp. A file
of its own so that the two halves run on different pytest-xdist workers (files stay whole)."""

from __future__ import annotations

import pytest
from brute_force import TOPDOWN, check_sensitive, check_unbiased

PLAIN = [v for v in TOPDOWN if v != "nvae_flows"]   # nvae_flows: test_bound_exact_flows.py


@pytest.mark.slow
@pytest.mark.parametrize("variant", PLAIN)
def test_every_importance_weight_is_unbiased_for_the_brute_force_marginal(trained, images,
                                                                          exact_log_px, variant):
    check_unbiased(trained[variant], images, *exact_log_px(variant), variant)


@pytest.mark.slow
@pytest.mark.parametrize("variant", PLAIN)
def test_model_is_sensitive_enough_for_the_brute_force_test(trained, images, exact_log_px,
                                                            variant):
    check_sensitive(trained[variant], images, exact_log_px(variant)[0])
