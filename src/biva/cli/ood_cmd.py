"""``biva ood``: anomaly detection with L^{>k} (Table 5 / Figure 4) for a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from biva.cli.common import (
    add_renamed_option,
    add_run_dir_argument,
    add_runtime_options,
    nonnegative_int,
    positive_int,
    setup_runtime,
)
from biva.ood.experiment import OODSettings, metrics_markdown, run_ood
from biva.ood.metrics import OOD_PAIRS, table_markdown
from biva.ood.scores import SCORE_HELP
from biva.ood.sets import SYNTHETIC
from biva.utils.run_lock import output_lock


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    # "(default: None)" says nothing; those options describe their default in the help text.
    def _get_help_string(self, action):
        if action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ood", help="anomaly detection: L_K, L^{>k} and the likelihood ratio LLR^{>k}",
        description="Score an in-distribution test set and OOD sets with L_K, L^{>k} (eq. 2) "
        "and LLR^{>k} = L_K - L^{>k} for several k (one bottom-up pass shared by every k); "
        "write the mean L^{>k} per dataset and k (table.md/json, Table 5), AUROC / AUPRC / "
        "FPR at 80%% and 95%% TPR with bootstrap intervals per score, k and OOD set, with k "
        "chosen on validation data (metrics.json/md), a detector fitted on validation data "
        "(detector.json), histograms and per-example scores (scores.npz/csv). Synthetic OOD "
        f"sets need no download: {', '.join(SYNTHETIC)}.",
        formatter_class=_Formatter)
    add_run_dir_argument(p, "a biva run directory")
    p.add_argument("--pair", choices=sorted(OOD_PAIRS), default=None,
                   help="a named experiment: sets --in-data and --ood-data "
                   "(fashion_vs_mnist is Table 5's binary pair)")
    p.add_argument("--in-data", default=None,
                   help="in-distribution dataset (default: the run's own dataset)")
    p.add_argument("--in-path", default=None,
                   help="file or folder of --in-data when it is folder or npz")
    p.add_argument("--ood-data", nargs="+", default=None, metavar="NAME",
                   help="out-of-distribution dataset(s): a dataset name, folder/npz, or a "
                   f"synthetic set made from the in-distribution images ({', '.join(SYNTHETIC)})")
    p.add_argument("--ood-path", nargs="+", default=[], metavar="PATH",
                   help="files/folders of the folder/npz entries of --ood-data, in order")
    p.add_argument("--ood-split", choices=["test", "all"], default="test",
                   help="which part of each OOD dataset to score")
    p.add_argument("--fit-shape", action="store_true",
                   help="bring 8-bit OOD images of another shape to the model's (grey <-> "
                   "colour, area resize), e.g. MNIST digits against a model of 32x32 photos")
    p.add_argument("--prior-layers", default=None, metavar="k,...",
                   help="comma-separated k of L^{>k}, e.g. 0,2,4 (default: 0..L-1)")
    p.add_argument("--score", default="elbo,lk,llr",
                   help="comma-separated scores: " + "; ".join(
                       f"{k}: {v}" for k, v in SCORE_HELP.items()))
    p.add_argument("--n-valid", type=nonnegative_int, default=1000,
                   help="validation images per set for choosing k and fitting the detector "
                   "(0: no choice, no detector)")
    p.add_argument("--detector", choices=["dos", "synthetic", "none"], default="dos",
                   help="the detector.json fitted: dos = the density of [L_K, LLR^{>1}, "
                   "LLR^{>2}] (the --k among 1, 2; the --k >= 1 if neither is swept) on "
                   "in-distribution validation images alone (no anomaly examples); synthetic = "
                   "one (score, k) chosen against the synthetic --ood-data sets; none")
    p.add_argument("--bootstrap", type=nonnegative_int, default=200,
                   help="bootstrap replicates for the metrics' 95%% intervals (0: none)")
    p.add_argument("--samples", type=positive_int, default=1, metavar="K",
                   help="importance samples K per example (1: the plain L^{>k} estimator)")
    p.add_argument("--n-examples", type=nonnegative_int, default=0,
                   help="first N of each set (0: all)")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path")
    p.add_argument("--batch-size", type=positive_int, default=100,
                   help="examples per batch")
    p.add_argument("--max-batch", type=positive_int, default=4096,
                   help="rows (samples x examples) of one batched pass: bounds memory")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the latent samples and binarization (default: the run's)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/ood)")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16 autocast for the network (the log-weights stay float32); about "
                   "1.5-2x faster on CPUs with AVX-512 BF16 and on GPUs")
    add_runtime_options(p)
    add_renamed_option(p, "--k", "--prior-layers")
    add_renamed_option(p, "--n-samples", "--samples")
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> OODSettings:
    """The command's options as :class:`~biva.ood.experiment.OODSettings`."""
    return OODSettings(
        run_dir=args.run_dir, pair=args.pair, in_data=args.in_data, in_path=args.in_path,
        ood_data=args.ood_data, ood_path=args.ood_path, ood_split=args.ood_split,
        fit_shape=args.fit_shape, prior_layers=args.prior_layers, score=args.score,
        n_valid=args.n_valid, detector=args.detector, bootstrap=args.bootstrap,
        n_samples=args.samples, n_examples=args.n_examples, checkpoint=args.checkpoint,
        batch_size=args.batch_size, max_batch=args.max_batch, seed=args.seed, out=args.out,
        data_root=args.data_root, amp=args.amp, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    settings = settings_from(args)
    # One writer per output folder: two runs into one --out would interleave their files.
    with output_lock(settings.out_dir):
        res = run_ood(settings, device)
    print(table_markdown(res["table"]), end="")
    print()
    print(metrics_markdown(res["metrics"]), end="")
    print("AUROC 0.5 is chance; below 0.5 the score ranks the OOD set as *more* normal than "
          "the in-distribution set (0.000 = perfectly separated the wrong way round).")
    print(f"written: {res['out']}/{{table.md,table.json,metrics.json,metrics.md,histograms*.png,"
          "scores.npz,scores.csv,detector.json}")
    return 0
