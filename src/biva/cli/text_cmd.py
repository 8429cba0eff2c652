"""``biva text``: sentence modelling with an LSTM LM, the RNN-VAE and BIVA (appendix E)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from biva.cli.common import HelpFormatter, add_renamed_option, parse_int_list, parse_names
from biva.data.text import fortunes_sentences, prepare_corpus, read_sentences
from biva.experiments.text import (
    MODELS,
    TextConfig,
    format_examples,
    format_table,
    run_text_experiment,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "text", help="sentence models: LSTM, RNN-VAE, BIVA with/without autoregression",
        description="Train and test sentence models on one corpus and print a Table-7-style "
        "table (parameters, -log p(x) in nats per sentence, KL, perplexity) plus prior samples "
        "and greedy reconstructions (Tables 8 and 9). Writes OUT/results.json, OUT/table.txt, "
        "OUT/samples.txt and OUT/vocab.json. Models: "
        + ", ".join(f"{k} ({v})" for k, v in MODELS.items()) + ".",
        formatter_class=HelpFormatter)
    d = TextConfig()
    p.add_argument("--corpus", default="fortunes",
                   help="'fortunes' (Debian's fortunes packages) or a text file, one sentence "
                   "a line, tokens separated by whitespace")
    p.add_argument("--variants", default="lstm,rnnvae,biva,biva-nar",
                   help=f"comma-separated of {','.join(MODELS)}")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the corpus")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--vocab", type=int, default=d.vocab, help="most frequent words kept")
    p.add_argument("--max-len", type=int, default=d.max_len, help="longest sentence (tokens)")
    p.add_argument("--max-sentences", type=int, default=0, help="use the first N (0: all)")
    p.add_argument("--drop-unknown", action="store_true",
                   help="drop sentences with out-of-vocabulary words (as the paper)")
    p.add_argument("--valid-size", type=int, default=d.valid_size,
                   help="sentences held out for validation")
    p.add_argument("--test-size", type=int, default=d.test_size,
                   help="sentences held out for the test table")
    p.add_argument("--embed", type=int, default=d.embed, help="word embedding size")
    p.add_argument("--hidden", type=int, default=d.hidden, help="LSTM units")
    p.add_argument("--latent", type=int, default=d.latent, help="RNN-VAE latent units")
    p.add_argument("--features", type=int, default=d.features, help="BIVA block width F")
    p.add_argument("--biva-latents", default=",".join(map(str, d.biva_latents)),
                   help="BIVA latent units per layer, bottom first (L = their number)")
    p.add_argument("--blocks", type=int, default=d.blocks, help="residual blocks per stage")
    p.add_argument("--encoder", choices=("lstm", "mean"), default=d.encoder,
                   help="BIVA's sentence encoder")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="sentences per batch")
    p.add_argument("--lr", type=float, default=d.lr, help="Adamax learning rate")
    p.add_argument("--kl-budget", type=float, default=d.kl_budget,
                   help="initial free bits in nats, spread over the latent groups")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs,
                   help="last epochs without free bits")
    p.add_argument("--max-steps", type=int, default=0,
                   help="cap on steps per epoch (0: whole epochs; for timing and smoke tests)")
    p.add_argument("--examples", type=int, default=d.n_examples,
                   help="prior samples and reconstructions per model")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the split, the init and the batches")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_renamed_option(p, "--models", "--variants")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    latents = tuple(parse_int_list(args.biva_latents, "--biva-latents"))
    cfg = replace(TextConfig(), vocab=args.vocab, max_len=args.max_len,
                  valid_size=args.valid_size, test_size=args.test_size, embed=args.embed,
                  hidden=args.hidden, latent=args.latent, features=args.features,
                  biva_latents=latents, blocks=args.blocks, encoder=args.encoder,
                  epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  kl_budget=args.kl_budget, finetune_epochs=args.finetune_epochs,
                  max_steps_per_epoch=args.max_steps, n_examples=args.examples, seed=args.seed)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be >= 1")
    sentences = (fortunes_sentences() if args.corpus == "fortunes"
                 else read_sentences(args.corpus))
    if args.max_sentences:
        sentences = sentences[:args.max_sentences]
    corpus = prepare_corpus(sentences, cfg.vocab, cfg.max_len, cfg.valid_size, cfg.test_size,
                            cfg.seed, drop_unknown=args.drop_unknown)
    models = parse_names(args.variants)
    results = run_text_experiment(corpus, models, cfg, args.out)
    print()
    print(format_table(results))
    print()
    print(format_examples(results))
    for name in ("results.json", "table.txt", "samples.txt"):
        print(f"written: {args.out / name}")
    return 0
