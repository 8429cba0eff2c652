"""Sentences for the text experiment (appendix E): corpora, a whitespace vocabulary, batches.

A corpus is a list of sentences, one string each, tokenized on whitespace (the BookCorpus of the
paper comes pre-tokenized that way). :func:`fortunes_sentences` turns Debian's ``fortunes``
files into such sentences; :func:`read_sentences` reads any file of one sentence a line.
Token ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then words by frequency.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
FORTUNES_DIR = Path("/usr/share/games/fortunes")
_SKIP_FORTUNE_FILES = {"ascii-art"}  # pictures, not sentences

_OVERSTRIKE = re.compile(r".\x08")                   # "_\bA" (underline) and "A\bA" (bold)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# After . ! ? (and a closing quote or bracket), before an upper-case letter or digit.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")
_PUNCT = re.compile(r"([.,!?;:\"()\[\]])")


def read_sentences(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file, whitespace collapsed: one sentence each."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} not found")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [s for s in (" ".join(line.split()) for line in lines) if s]


def normalize_sentence(text: str) -> str:
    """BookCorpus style: lower case, punctuation split off as tokens, single spaces."""
    return " ".join(_PUNCT.sub(r" \1 ", text.lower()).split())


def split_sentences(text: str) -> list[str]:
    """Split running text at ., ! or ? followed by space and an upper-case letter or digit."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def fortunes_sentences(root: str | Path = FORTUNES_DIR, min_tokens: int = 2) -> list[str]:
    """Sentences of the ``%``-separated fortune files under ``root`` (``apt-get install
    fortunes fortunes-min``): attributions ("-- Author") dropped, split with
    :func:`split_sentences`, normalized, duplicates removed (first occurrence kept)."""
    root = Path(root)
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.suffix
                   and p.name not in _SKIP_FORTUNE_FILES) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no fortune files in {root}: apt-get install -y fortunes "
                                "fortunes-min, or pass a text file of one sentence a line")
    seen: dict[str, None] = {}
    for f in files:
        text = _CONTROL.sub("", _OVERSTRIKE.sub("", f.read_text(encoding="utf-8",
                                                                errors="replace")))
        for entry in re.split(r"^%\s*$", text, flags=re.MULTILINE):
            body = " ".join(line for line in entry.splitlines()
                            if not line.strip().startswith("--"))
            for s in split_sentences(body):
                s = normalize_sentence(s)
                letters = sum(c.isalpha() for c in s)
                # Keep prose: code, tables and ASCII pictures are mostly non-letters.
                if len(s.split()) >= min_tokens and letters >= 0.6 * len(s.replace(" ", "")):
                    seen.setdefault(s, None)
    return list(seen)


@dataclass
class Vocabulary:
    """Whitespace tokens <-> ids; the four specials first, then words by falling frequency."""

    tokens: list[str]

    def __post_init__(self):
        if tuple(self.tokens[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}")
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, sentences: Sequence[str], size: int) -> Vocabulary:
        """The ``size`` most frequent whitespace tokens of ``sentences`` (ties: alphabetical)."""
        counts = Counter(t for s in sentences for t in s.split() if t not in SPECIALS)
        words = sorted(counts, key=lambda t: (-counts[t], t))[:size]
        return cls(list(SPECIALS) + words)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, sentence: str) -> list[int]:
        """Ids of the whitespace tokens (``<unk>`` for unknown words), no ``<bos>``/``<eos>``."""
        return [self.index.get(t, UNK_ID) for t in sentence.split()]

    def decode(self, ids: Sequence[int]) -> str:
        """Tokens joined by spaces, stopping at ``<eos>``; ``<pad>``/``<bos>`` are skipped."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                words.append(self.tokens[i])
        return " ".join(words)

    def save(self, path: str | Path) -> None:
        """Write the tokens (index order) as a JSON list; :meth:`load` reads it back."""
        Path(path).write_text(json.dumps(self.tokens, ensure_ascii=False) + "\n",
                              encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """The vocabulary :meth:`save` wrote to ``path``."""
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class TextCorpus:
    """Encoded splits (lists of id lists, no ``<bos>``/``<eos>``) and their vocabulary."""

    vocab: Vocabulary
    train: list[list[int]]
    valid: list[list[int]]
    test: list[list[int]]


def prepare_corpus(sentences: Sequence[str], vocab_size: int = 20_000, max_len: int = 40,
                   valid_size: int = 1000, test_size: int = 1000, seed: int = 0,
                   drop_unknown: bool = False) -> TextCorpus:
    """Keep sentences of 1..``max_len`` tokens, shuffle (``seed``), hold out test and
    validation sentences, build the vocabulary on the training split only, encode.
    ``drop_unknown`` removes sentences with out-of-vocabulary words (as the paper does)."""
    kept = [s for s in sentences if 1 <= len(s.split()) <= max_len]
    order = np.random.default_rng(seed).permutation(len(kept))
    kept = [kept[i] for i in order]
    n_test, n_valid = min(test_size, len(kept) // 10), min(valid_size, len(kept) // 10)
    test, valid, train = (kept[:n_test], kept[n_test:n_test + n_valid],
                          kept[n_test + n_valid:])
    if not train:
        raise ValueError(f"no training sentences of at most {max_len} tokens in the corpus")
    vocab = Vocabulary.build(train, vocab_size)

    def encode(split: list[str]) -> list[list[int]]:
        ids = [vocab.encode(s) for s in split]
        return [x for x in ids if UNK_ID not in x] if drop_unknown else ids

    return TextCorpus(vocab, encode(train), encode(valid), encode(test))


def pad_batch(seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Decoder inputs ``<bos> w_1..w_n`` and targets ``w_1..w_n <eos>``, padded with
    ``<pad>``: (B, T), (B, T) int64, and lengths n + 1 (B,) (the tokens that are scored)."""
    lengths = torch.tensor([len(s) + 1 for s in seqs], dtype=torch.long)
    T = int(lengths.max())
    inputs = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
    targets = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
    for b, s in enumerate(seqs):
        n = len(s)
        inputs[b, 0] = BOS_ID
        inputs[b, 1:n + 1] = torch.tensor(s, dtype=torch.long)
        targets[b, :n] = torch.tensor(s, dtype=torch.long)
        targets[b, n] = EOS_ID
    return inputs, targets, lengths


def batch_indices(seqs: Sequence[Sequence[int]], batch_size: int, shuffle: bool = True,
                  seed: int = 0, epoch: int = 0) -> Iterator[list[int]]:
    """Index batches of one epoch, a function of (seed, epoch). Shuffled batches are built from
    length-sorted chunks of 50 batches, which cuts padding without fixing their order."""
    n = len(seqs)
    if not shuffle:
        for start in range(0, n, batch_size):
            yield list(range(start, min(n, start + batch_size)))
        return
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    chunk = 50 * batch_size
    batches = []
    for start in range(0, n, chunk):
        part = sorted(order[start:start + chunk], key=lambda i: len(seqs[i]))
        batches += [[int(i) for i in part[k:k + batch_size]]
                    for k in range(0, len(part), batch_size)]
    for k in rng.permutation(len(batches)):
        yield batches[k]
