"""Text experiment (appendix E): tokenizer, batches, the three sentence models, metrics, CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from biva.cli.main import main
from biva.data.text import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Vocabulary,
    fortunes_sentences,
    normalize_sentence,
    pad_batch,
    prepare_corpus,
    split_sentences,
)
from biva.experiments.text import TextConfig, build_model, evaluate, perplexity
from biva.models.text import SentenceDecoder, TextBIVA

TINY = TextConfig(embed=12, hidden=16, latent=4, features=16, biva_latents=(4, 3), vocab=40)

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "she", "he"]
VERBS = ["sees", "likes", "wants", "eats"]
OBJECTS = ["the fish .", "a red ball .", "some bread .", "the moon !", "it ?"]


def _sentences(n: int) -> list[str]:
    return [f"{SUBJECTS[i % 6]} {VERBS[(i // 6) % 4]} {OBJECTS[(i // 24) % 5]}" for i in range(n)]


def test_vocabulary_cut_unknown_and_round_trip():
    vocab = Vocabulary.build(["a a a b b c", "a b d"], size=2)
    assert vocab.tokens == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "b"]
    assert vocab.encode("a c b zzz") == [4, UNK_ID, 5, UNK_ID]
    assert vocab.decode(vocab.encode("b a a")) == "b a a"
    assert vocab.decode([BOS_ID, 4, PAD_ID, 5, EOS_ID, 4]) == "a b"  # stops at <eos>
    corpus = prepare_corpus(_sentences(120) + ["1 2 3 4 5 6 7 8 9"], vocab_size=100,
                            max_len=8, valid_size=10, test_size=10)
    # the 9-token sentence is over max_len; every kept sentence round-trips
    assert len(corpus.train) + len(corpus.valid) + len(corpus.test) == 120
    assert all(1 <= len(s) <= 8 for s in corpus.train)
    assert all(UNK_ID not in s for s in corpus.train)
    text = [corpus.vocab.decode(s) for s in corpus.test]
    assert all(t in _sentences(120) for t in text)
    small = prepare_corpus(_sentences(120), vocab_size=3, max_len=40, drop_unknown=True)
    assert all(UNK_ID not in s for s in small.train)


def test_sentence_splitting_and_normalization(tmp_path):
    assert split_sentences('He said "Hi." Then he left!  OK? 3 cats.') == [
        'He said "Hi."', "Then he left!", "OK?", "3 cats."]
    assert normalize_sentence('Well, "Hi"!') == 'well , " hi " !'
    root = tmp_path / "fortunes"
    root.mkdir()
    (root / "test").write_text("Be happy.  Be kind!\n\t\t-- Anon\n%\nA_\bB rule.\n%\n$#@ ==\n%\n")
    (root / "test.dat").write_bytes(b"\x00\x01")
    assert fortunes_sentences(root) == ["be happy .", "be kind !", "ab rule ."]


def test_pad_batch():
    inputs, targets, lengths = pad_batch([[5, 6, 7], [8]])
    assert inputs.tolist() == [[BOS_ID, 5, 6, 7], [BOS_ID, 8, PAD_ID, PAD_ID]]
    assert targets.tolist() == [[5, 6, 7, EOS_ID], [8, EOS_ID, PAD_ID, PAD_ID]]
    assert lengths.tolist() == [4, 2]


def test_perplexity_from_nll_and_tokens():
    # two sentences of 3 and 1 words (+ end tokens = 6 tokens) with NLLs 7.5 and 4.5 nats
    assert perplexity(7.5 + 4.5, 6) == pytest.approx(math.exp(2.0))

    class Uniform(torch.nn.Module):
        """p(w) = 1/V for every token: PPL must be V."""

        def forward(self, inputs, targets, lengths, **kw):
            nll = lengths.double() * math.log(50)
            return type("O", (), {"nll": nll, "kl": nll.new_zeros(len(nll), 0)})()

    metrics = evaluate(Uniform(), [[5, 6, 7], [8]])
    assert metrics["tokens"] == 6
    assert metrics["ppl"] == pytest.approx(50.0)
    assert metrics["nll"] == pytest.approx(3 * math.log(50))


@pytest.mark.parametrize("name", ["lstm", "rnnvae", "biva", "biva-nar"])
def test_each_model_learns_a_tiny_corpus(name):
    torch.manual_seed(0)
    corpus = prepare_corpus(_sentences(64), vocab_size=40, valid_size=0, test_size=0)
    model = build_model(name, len(corpus.vocab), TINY)
    batch = pad_batch(corpus.train[:32])
    if isinstance(model, TextBIVA):
        model.initialize(batch[1], batch[2])
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        out = model(*batch, free_bits=0.5)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert out.nll.shape == (32,) and torch.isfinite(out.bound).all()
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    samples = model.sample(3, max_len=6, generator=torch.Generator().manual_seed(0))
    assert samples.shape[0] == 3 and samples.shape[1] <= 7


def test_decoder_without_autoregression_ignores_previous_tokens():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 8)
    cond = torch.randn(2, 5)
    a = torch.tensor([[BOS_ID, 4, 5, 6, 7], [BOS_ID, 8, 9, 10, 11]])
    b = a.clone()
    b[:, 2] = 13
    nar = SentenceDecoder(emb, 16, cond_dim=5, autoregressive=False)
    assert torch.equal(nar(a, cond), nar(b, cond))
    ar = SentenceDecoder(emb, 16, cond_dim=5, autoregressive=True)
    la, lb = ar(a, cond), ar(b, cond)
    assert torch.equal(la[:, :2], lb[:, :2]) and not torch.allclose(la[:, 2:], lb[:, 2:])
    # the same holds inside the full model
    model = build_model("biva-nar", 20, replace(TINY, vocab=16))
    assert torch.equal(model.decoder(a, cond[:, :1].expand(2, 16)),
                       model.decoder(b, cond[:, :1].expand(2, 16)))


def test_text_cli_on_a_sentence_file(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_sentences(200)) + "\n")
    out = tmp_path / "text"
    assert main(["text", "--corpus", str(corpus), "--variants", "lstm,rnnvae,biva",
                 "--epochs", "2", "--max-steps", "3", "--batch-size", "16", "--embed", "8",
                 "--hidden", "16", "--latent", "4", "--features", "16", "--biva-latents", "4,3",
                 "--examples", "2", "--test-size", "10", "--valid-size", "10",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"lstm", "rnnvae", "biva"}
    for r in results["models"].values():
        assert math.isfinite(r["test"]["ppl"]) and r["parameters"] > 0
        assert r["test"]["ppl"] == pytest.approx(
            math.exp(r["test"]["nll"] * r["test"]["sentences"] / r["test"]["tokens"]))
    assert results["models"]["biva"]["free_bits"]  # free bits were checked on plateau
    table = (out / "table.txt").read_text()
    assert "PPL" in table and "BIVA" in table
    assert "recon:" in (out / "samples.txt").read_text()
    assert "-log p(x)" in capsys.readouterr().out
