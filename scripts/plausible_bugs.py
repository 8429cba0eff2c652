# ruff: noqa: E501  (the patches are exact source lines)
"""The plausible bugs of the bound that the tests must catch, as patches to apply by hand.

    python scripts/plausible_bugs.py 1      # apply bug 1 to the work tree
    .venv/bin/python -m pytest -q -x tests/bounds tests/test_likelihoods.py
    git checkout src/                       # undo

    .venv/bin/python scripts/plausible_bugs.py --check   # each bug in a scratch worktree of
                                                         # HEAD against the test that must fail

Bugs: 1 KL of z^BU dropped; 2 L^{>k} at the prior means; 3 L^{>k} reusing q's z^BU_<=k;
4a/4b free bits on the total / batch-mean KL; 5 x repeated example-major; 6a/6b log 2 pi dropped
from the z_L prior / from q's log-density; 7/7b q(y|x) detached in the unlabelled term of the
pass's loss / of training's objective.
"""
import sys

H = "src/biva/models/hierarchy.py"
B = "src/biva/models/base.py"
O = "src/biva/objectives/training.py"
S = "src/biva/models/semi_supervised.py"
G = "src/biva/nn/gaussian.py"
SAMPLE = 'zs = [p.sample() if prior_mode == "sample" else p.mu for p in priors]'
BUGS = {
 "1": (H, "for name, (z, q), p_log in zip(layer.names, parts, p_logs, strict=True):",
       "for name, (z, q), p_log in list(zip(layer.names, parts, p_logs, strict=True))[-1:]:"),
 "2": (H, SAMPLE, "zs = [p.mu for p in priors]"),
 "3": (H, SAMPLE, "zs = [bu.at(layer.index)[1], priors[1].sample()] if len(priors) == 2 else [p.sample() for p in priors]"),
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
 "7b": (O, "lq = F.log_softmax(out.logits.float(), dim=1)[ui]",
        "lq = F.log_softmax(out.logits.float(), dim=1)[ui].detach()"),
}
#: The test that must fail under each bug (docs/guide/testing.md's table).
BOUNDS = "tests/bounds/test_bound_exact"
UNBIASED = "test_every_importance_weight_is_unbiased_for_the_brute_force_marginal"
CAUGHT_BY = {
    "1": f"{BOUNDS}.py::{UNBIASED}[biva]",
    "2": f"{BOUNDS}_ladders.py::{UNBIASED}[vae]",
    "3": f"{BOUNDS}.py::{UNBIASED}[biva]",
    "4a": f"{BOUNDS}.py::test_free_bits_apply_per_group_and_example",
    "4b": f"{BOUNDS}.py::test_free_bits_apply_per_group_and_example",
    "5": f"{BOUNDS}_ladders.py::test_log_px_of_each_row_scores_its_own_image",
    "6a": "tests/test_likelihoods.py::test_latent_log_densities_match_torch_distributions",
    "6b": "tests/test_likelihoods.py::test_latent_log_densities_match_torch_distributions",
    "7": f"{BOUNDS}_semi_supervised.py::test_classifier_gets_gradient_from_the_unlabelled_term",
    "7b": f"{BOUNDS}_semi_supervised.py::test_classifier_gets_gradient_from_the_unlabelled_term",
}


def apply(bug: str, root: str = ".") -> None:
    """Write bug ``bug`` into the source tree at ``root``."""
    path, old, new = BUGS[bug]
    with open(f"{root}/{path}") as f:
        s = f.read()
    assert s.count(old) == 1, (bug, s.count(old))
    with open(f"{root}/{path}", "w") as f:
        f.write(s.replace(old, new))


def check() -> int:
    """Each bug in a scratch worktree of HEAD, against the test that must fail; 1 if one passes."""
    import os
    import subprocess
    import tempfile

    python = os.path.abspath(".venv/bin/python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        tree = f"{tmp}/tree"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", tree, "HEAD"], check=True)
        try:
            control = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:xdist", "-p",
                                      "no:cacheprovider", *sorted(set(CAUGHT_BY.values()))],
                                     cwd=tree, env={**env, "PYTHONPATH": f"{tree}/src"},
                                     capture_output=True, text=True)
            print(f"control (no bug): {'passed' if control.returncode == 0 else 'FAILED'}")
            missed += control.returncode != 0
            for bug, test in CAUGHT_BY.items():
                subprocess.run(["git", "checkout", "-q", "--", "src"], cwd=tree, check=True)
                apply(bug, tree)
                res = subprocess.run([python, "-m", "pytest", "-q", "-x", "-p", "no:xdist",
                                      "-p", "no:cacheprovider", test], cwd=tree,
                                     env={**env, "PYTHONPATH": f"{tree}/src"},
                                     capture_output=True, text=True)
                caught = res.returncode == 1
                missed += not caught
                print(f"bug {bug}: {'caught' if caught else 'MISSED'} by {test}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], check=False)
    return int(missed > 0)


if __name__ == "__main__":
    if sys.argv[1] == "--check":
        sys.exit(check())
    apply(sys.argv[1])
