# ruff: noqa: E501  (the patches are exact source lines)
"""The plausible bugs of the bound that the tests must catch, as patches to apply by hand.

    python scripts/plausible_bugs.py 1      # apply bug 1 to the work tree
    .venv/bin/python -m pytest -q -x tests/bounds tests/test_likelihoods.py
    git checkout src/                       # undo

Bugs: 1 KL of z^BU dropped; 2 L^{>k} at the prior means; 3 L^{>k} reusing q's z^BU_<=k;
4a/4b free bits on the total / batch-mean KL; 5 x repeated example-major; 6a/6b log 2 pi dropped
from the z_L prior / from q's log-density; 7 q(y|x) detached in the unlabelled term.
"""
import sys

H = "src/biva/models/hierarchy.py"
B = "src/biva/models/base.py"
O = "src/biva/objectives/training.py"
S = "src/biva/models/semi_supervised.py"
G = "src/biva/nn/gaussian.py"
SAMPLE = 'zs = [p.sample() if prior_mode == "sample" else p.mu for p in priors]'
BUGS = {
 "1": (H, "                for term in terms:\n",
       "                for term in terms[len(terms) - 1:]:\n"),
 "2": (H, SAMPLE, "zs = [p.mu for p in priors]"),
 "3": (H, SAMPLE, "zs = [bu.z_bu[i - 1], priors[1].sample()] if len(priors) == 2 else [p.sample() for p in priors]"),
 "4a": (O, "return -(out.log_px - kl_weight * kl.sum(1)).mean()",
        "return -(out.log_px - kl_weight * (out.kl.sum(1).clamp_min(free_bits) if free_bits > 0 else out.kl.sum(1))).mean()"),
 "4b": (O, "return -(out.log_px - kl_weight * kl.sum(1)).mean()",
        "return -(out.log_px.mean() - kl_weight * (out.kl.mean(0).clamp_min(free_bits) if free_bits > 0 else out.kl.mean(0)).sum())"),
 "5": (B, "log_px = self.likelihood.log_prob(x_params, repeat_batch(x, n_samples))",
       "log_px = self.likelihood.log_prob(x_params, x.repeat_interleave(n_samples, 0))"),
 "6a": (G, "return (-0.5 * (zf**2 + LOG_2PI)).flatten(1).sum(1)", "return (-0.5 * (zf**2)).flatten(1).sum(1)"),
 "6b": (G, "lp = -0.5 * (((zf - mu) / sigma) ** 2 + LOG_2PI) - torch.log(sigma)",
        "lp = -0.5 * (((zf - mu) / sigma) ** 2) - torch.log(sigma)"),
 "7": (S, "self._unlabelled_terms(td, log_q[ui],", "self._unlabelled_terms(td, log_q[ui].detach(),"),
}
if __name__ == "__main__":
    path, old, new = BUGS[sys.argv[1]]
    s = open(path).read()
    assert s.count(old) == 1, (sys.argv[1], s.count(old))
    open(path, "w").write(s.replace(old, new))
