"""Which statistics the no-examples detector (dos) should keep: a diagnostic on a trained run.

For the run's validation images (two independent Monte Carlo draws), its test images and a
second dataset's test images, computes the dos statistics [L_K, LLR^{>k} (prior means), k =
1..L-1]; prints each statistic's test-retest reliability (Spearman's rho between the two draws
of the validation images), its single AUROC against the second dataset (either direction), and
the dos AUROC of the density fitted on the first validation draw for every subset of ratios
(L_K always in). Writes OUT.json with all of it. Reading the other dataset is the point here:
this measures candidate rules, it is not a detector.

Usage: python benchmarks/dos_statistic_subsets.py RUN_DIR --ood-data mnist --n-valid 1000 \
    --n-test 500 --samples 10 --out dos_subsets.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from biva.data import evaluation_split, load_run_data
from biva.ood.density_of_states import (
    DOS_SWEEP_SCORES,
    DensityOfStates,
    dos_columns,
    dos_statistics,
)
from biva.ood.scores import sweep_split
from biva.ood.sets import load_like_run
from biva.runs.loading import load_trained


def subset_name(ks: list[int]) -> str:
    """The key of a density on L_K and the ratios at ``ks``: "L,1,2"."""
    return "L" + "".join(f",{k}" for k in ks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--ood-data", default="mnist")
    p.add_argument("--n-valid", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--samples", type=int, default=10, help="importance samples K")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, cfg, state = load_trained(args.run_dir)
    data = load_run_data(cfg)
    seed = cfg.train.seed
    other = load_like_run(args.ood_data, None, data, root=cfg.data.root, seed=seed)
    valid = evaluation_split(data, "valid", seed)
    sets = {"valid_a": (valid, args.n_valid, seed), "valid_b": (valid, args.n_valid, seed + 1),
            "test": (evaluation_split(data, "test", seed), args.n_test, seed),
            "ood": (evaluation_split(other, "test", seed), args.n_test, seed)}
    ks = list(range(1, model.n_layers))
    stats = {}
    for name, (split, n, draw_seed) in sets.items():
        torch.manual_seed(draw_seed)          # valid_a and valid_b: two independent draws
        sweep = sweep_split(model, split, data.kind, cfg.model.bits, [0, *ks],
                            scores=DOS_SWEEP_SCORES, n_samples=args.samples, n_examples=n)
        stats[name] = dos_statistics(sweep, ks)
        print(f"{name}: {len(stats[name])} images", flush=True)
    columns = dos_columns(ks)
    y = np.r_[np.zeros(len(stats["test"])), np.ones(len(stats["ood"]))]

    def auroc(a_in: np.ndarray, a_out: np.ndarray) -> float:
        return float(roc_auc_score(y, np.r_[a_in, a_out]))

    result = {"run_dir": str(args.run_dir), "step": state.get("step"),
              "ood_data": args.ood_data, "n_samples": args.samples,
              "n_valid": len(stats["valid_a"]), "n_test": len(stats["test"]),
              "reliability": {}, "single_auroc": {}, "dos_auroc": {}}
    for j, c in enumerate(columns):
        result["reliability"][c] = float(spearmanr(stats["valid_a"][:, j],
                                                   stats["valid_b"][:, j]).statistic)
        a = auroc(stats["test"][:, j], stats["ood"][:, j])
        result["single_auroc"][c] = max(a, 1 - a)
    for r in range(len(ks) + 1):
        for subset in itertools.combinations(range(1, len(columns)), r):
            cols = [0, *subset]
            dos = DensityOfStates().fit(stats["valid_a"][:, cols])
            key = subset_name([ks[j - 1] for j in subset])
            result["dos_auroc"][key] = auroc(dos.anomaly(stats["test"][:, cols]),
                                             dos.anomaly(stats["ood"][:, cols]))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for key in ("reliability", "single_auroc"):
        print(key, {c: round(v, 3) for c, v in result[key].items()})
    for name, v in sorted(result["dos_auroc"].items(), key=lambda kv: -kv[1])[:8]:
        print(f"dos [{name}]: {v:.3f}")
    print(f"dos [all]: {result['dos_auroc'][subset_name(ks)]:.3f}")


if __name__ == "__main__":
    main()
