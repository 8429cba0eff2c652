"""Text experiment (appendix E): LSTM LM, RNN-VAE and BIVA(+LSTM) on one corpus; Tables 7-9.

Training follows the appendix: Adamax (lr 2e-3), one latent sample, free bits for the latent
models with a KL budget (30 nats) spread equally over the latent groups and lowered on plateau
(halved after every validation check that does not improve the best validation bound), then a
fine-tuning phase without free bits ("finetuned" in Table 7); the RNN-VAE baseline uses a linear
KL warm-up instead. Added (not in the paper): gradient-norm clipping at 5 for the LSTMs.

Units: -log p(x) and KL in nats per sentence; PPL = exp(sum of -log p(x) / number of scored
tokens), the end token included (:func:`perplexity`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from biva.data.text import TextCorpus, batch_indices, pad_batch
from biva.models.text import RNNVAE, LSTMLanguageModel, TextBIVA
from biva.utils.atomic import atomic_write_json, atomic_write_text

MODELS = {
    "lstm": "LSTM",
    "rnnvae": "RNN-VAE, KL warm-up",
    "rnnvae-fb": "RNN-VAE, free bits, finetuned",
    "biva": "BIVA + LSTM, free bits, finetuned",
    "biva-nar": "BIVA, no autoregression, finetuned",
}


@dataclass(frozen=True)
class TextConfig:
    """Sizes and schedule (defaults sized for a CPU; the paper: vocab 20000, embed 512,
    hidden 1024, batch 512, 5 epochs). ``max_steps_per_epoch`` 0: whole epochs."""

    vocab: int = 10_000
    max_len: int = 40
    valid_size: int = 1000
    test_size: int = 1000
    embed: int = 128
    hidden: int = 256
    latent: int = 32
    features: int = 128
    biva_latents: tuple[int, ...] = (32, 28, 24, 20, 16, 12, 8)
    blocks: int = 1
    encoder: str = "lstm"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    grad_clip: float = 5.0
    kl_budget: float = 30.0
    free_bits_decay: float = 0.5
    checks_per_epoch: int = 4
    finetune_epochs: int = 1
    kl_warmup_fraction: float = 0.5
    max_steps_per_epoch: int = 0
    n_examples: int = 20
    seed: int = 0


def perplexity(nll_nats: float, tokens: int) -> float:
    """exp(total NLL in nats / number of scored tokens, end tokens included)."""
    return math.exp(nll_nats / tokens)


def build_model(name: str, vocab_size: int, cfg: TextConfig) -> nn.Module:
    """One of :data:`MODELS` with the sizes of ``cfg``."""
    if name == "lstm":
        return LSTMLanguageModel(vocab_size, cfg.embed, cfg.hidden)
    if name in ("rnnvae", "rnnvae-fb"):
        return RNNVAE(vocab_size, cfg.embed, cfg.hidden, cfg.latent)
    if name in ("biva", "biva-nar"):
        return TextBIVA(vocab_size, cfg.embed, cfg.hidden, cfg.features, cfg.biva_latents,
                        cfg.blocks, cfg.encoder, autoregressive=name == "biva")
    raise ValueError(f"--models: expected names from {tuple(MODELS)}, got {name!r}")


def n_groups(model: nn.Module) -> int:
    """Number of KL groups (free bits are spread over them)."""
    if isinstance(model, TextBIVA):
        return model.hierarchy.n_groups
    return 1 if isinstance(model, RNNVAE) else 0


class FreeBitsPlateau:
    """lambda per group and sentence: ``budget / groups``, multiplied by ``decay`` after each
    check that does not improve the best validation bound; values under ``floor`` become 0."""

    def __init__(self, budget: float, groups: int, decay: float = 0.5, floor: float = 0.01):
        self.value = budget / groups if groups else 0.0
        self.decay, self.floor, self.best = decay, floor, math.inf

    def update(self, valid_bound: float) -> float:
        """Record a validation bound (nats per sentence); returns lambda for what follows."""
        if valid_bound < self.best - 1e-3:
            self.best = valid_bound
        else:
            self.value *= self.decay
            if self.value < self.floor:
                self.value = 0.0
        return self.value


@torch.no_grad()
def evaluate(model: nn.Module, seqs: Sequence[Sequence[int]], batch_size: int = 128) -> dict:
    """Test metrics with one latent sample: {nll (-log p(x) bound), kl, rec (-log p(x|z)) in
    nats per sentence, ppl, tokens, sentences}."""
    was_training = model.training
    model.eval()
    rec = kl = 0.0
    tokens = 0
    try:
        for idx in batch_indices(seqs, batch_size, shuffle=False):
            inputs, targets, lengths = pad_batch([seqs[i] for i in idx])
            out = model(inputs, targets, lengths)
            rec += float(out.nll.sum())
            kl += float(out.kl.sum())
            tokens += int(lengths.sum())
    finally:
        model.train(was_training)
    n = len(seqs)
    return {"nll": (rec + kl) / n, "kl": kl / n, "rec": rec / n,
            "ppl": perplexity(rec + kl, tokens), "tokens": tokens, "sentences": n}


def train_model(name: str, corpus: TextCorpus, cfg: TextConfig,
                log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """Train one model; returns it and its training record (timings in CPU seconds)."""
    torch.manual_seed(cfg.seed)
    model = build_model(name, len(corpus.vocab), cfg)
    train = corpus.train
    if isinstance(model, TextBIVA):
        _, targets, lengths = pad_batch(train[:cfg.batch_size])
        model.initialize(targets, lengths)
    opt = torch.optim.Adamax(model.parameters(), lr=cfg.lr)
    full_steps = math.ceil(len(train) / cfg.batch_size)
    steps = min(full_steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else full_steps
    total = steps * cfg.epochs
    use_free_bits = name in ("rnnvae-fb", "biva", "biva-nar")
    fb = FreeBitsPlateau(cfg.kl_budget, n_groups(model), cfg.free_bits_decay)
    finetune_from = (cfg.epochs - min(cfg.finetune_epochs, cfg.epochs - 1)) * steps
    warmup = max(1, round(cfg.kl_warmup_fraction * total)) if name == "rnnvae" else 0
    check_every = max(1, steps // max(1, cfg.checks_per_epoch))
    valid = corpus.valid[:500]
    record = {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
              "steps_per_epoch": steps, "full_epoch_steps": full_steps, "epochs": [],
              "free_bits": []}
    step = 0
    model.train()
    for epoch in range(cfg.epochs):
        cpu, losses = 0.0, []
        for k, idx in enumerate(batch_indices(train, cfg.batch_size, seed=cfg.seed,
                                              epoch=epoch)):
            if k >= steps:
                break
            t0 = time.process_time()
            lam = fb.value if use_free_bits and step < finetune_from else 0.0
            weight = min(1.0, (step + 1) / warmup) if warmup else 1.0
            out = model(*pad_batch([train[i] for i in idx]), free_bits=lam, kl_weight=weight)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            cpu += time.process_time() - t0
            losses.append(float(out.loss.detach()))
            step += 1
            if use_free_bits and step < finetune_from and step % check_every == 0:
                valid_nll = evaluate(model, valid)["nll"]
                record["free_bits"].append({"step": step, "valid_nll": valid_nll,
                                            "lambda": fb.update(valid_nll)})
        valid_metrics = evaluate(model, valid)
        record["epochs"].append({
            "epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses)),
            "valid": valid_metrics, "cpu_seconds": round(cpu, 2),
            "cpu_seconds_per_step": round(cpu / max(1, len(losses)), 4)})
        v = valid_metrics
        log(f"  {name} epoch {epoch + 1}/{cfg.epochs}: "
            f"loss {record['epochs'][-1]['train_loss']:.2f}, valid -log p(x) <= {v['nll']:.2f}, "
            f"KL {v['kl']:.2f}, PPL {v['ppl']:.1f}, {cpu:.0f} CPU s")
    per_step = sum(e["cpu_seconds"] for e in record["epochs"]) / max(1, step)
    record["cpu_seconds_per_step"] = round(per_step, 4)
    record["estimated_cpu_seconds_per_full_epoch"] = round(per_step * full_steps, 1)
    return model, record


@torch.no_grad()
def examples(model: nn.Module, corpus: TextCorpus, cfg: TextConfig) -> dict:
    """Prior samples (Table 8) and greedy reconstructions of test sentences (Table 9)."""
    model.eval()
    vocab, n = corpus.vocab, cfg.n_examples
    gen = torch.Generator().manual_seed(cfg.seed)
    samples = [vocab.decode(r) for r in model.sample(n, cfg.max_len, generator=gen)]
    inputs = corpus.test[:n]
    rec = model.reconstruct(*pad_batch(inputs), cfg.max_len) if inputs else None
    return {"samples": samples,
            "inputs": [vocab.decode(s) for s in inputs],
            "reconstructions": None if rec is None else [vocab.decode(r) for r in rec]}


def format_table(results: dict) -> str:
    """Table 7: parameters, -log p(x) (nats per sentence, '=' exact, '<=' a bound), KL, PPL."""
    lines = [f"{'model':40} {'parameters':>10} {'-log p(x)':>11} {'KL':>7} {'PPL':>8}"]
    for name, r in results["models"].items():
        t = r["test"]
        exact = name == "lstm"
        kl = "-" if exact else f"{t['kl']:.2f}"
        lines.append(f"{MODELS[name]:40} {r['parameters'] / 1e6:>9.2f}M "
                     f"{'=' if exact else '<='} {t['nll']:>7.2f} {kl:>7} {t['ppl']:>8.2f}")
    c = results["corpus"]
    lines.append(f"(test: {c['test_sentences']} sentences, {c['test_tokens']} tokens incl. end "
                 f"tokens; vocabulary {c['vocab']} incl. 4 specials; 1 latent sample)")
    return "\n".join(lines)


def format_examples(results: dict) -> str:
    """Tables 8 and 9 as plain text."""
    out = []
    for name, r in results["models"].items():
        ex = r["examples"]
        kind = "ancestral samples" if name == "lstm" else "greedy decoding of z ~ p(z)"
        out.append(f"== {MODELS[name]}: prior samples ({kind})")
        out += [f"  {s}" for s in ex["samples"]]
        if ex["reconstructions"] is not None:
            out.append(f"== {MODELS[name]}: reconstructions (greedy, z ~ q(z | x))")
            for a, b in zip(ex["inputs"], ex["reconstructions"], strict=True):
                out += [f"  input: {a}", f"  recon: {b}"]
        out.append("")
    return "\n".join(out)


def run_text_experiment(corpus: TextCorpus, models: Sequence[str], cfg: TextConfig,
                        out: str | Path, log: Callable[[str], None] = print) -> dict:
    """Train and test every model; writes out/results.json, out/table.txt, out/samples.txt and
    out/vocab.json. Returns the results."""
    for name in models:
        if name not in MODELS:
            raise ValueError(f"--models: expected names from {tuple(MODELS)}, got {name!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus.vocab.save(out / "vocab.json")
    stats = {"train_sentences": len(corpus.train), "valid_sentences": len(corpus.valid),
             "test_sentences": len(corpus.test), "vocab": len(corpus.vocab),
             "train_tokens": sum(len(s) + 1 for s in corpus.train),
             "test_tokens": sum(len(s) + 1 for s in corpus.test)}
    log(f"corpus: {stats}")
    results: dict = {"config": asdict(cfg), "corpus": stats, "models": {}}
    for name in models:
        log(f"training {name} ({MODELS[name]})")
        model, record = train_model(name, corpus, cfg, log)
        record["test"] = evaluate(model, corpus.test)
        record["examples"] = examples(model, corpus, cfg)
        results["models"][name] = record
        atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "table.txt", format_table(results) + "\n")
    atomic_write_text(out / "samples.txt", format_examples(results))
    return results
