"""Sentence models of appendix E: an LSTM language model, the RNN-VAE and BIVA with an LSTM decoder.

All three share :class:`SentenceDecoder`, an LSTM over word embeddings conditioned on a vector c
(the latents' features): c sets the initial state and, when ``cond_input``, is concatenated to
every step's input. ``autoregressive=False`` removes the previous tokens from the decoder's
input (Table 7, "without autoregressive components"): every step sees only c.

:class:`TextBIVA` reuses :class:`~biva.models.hierarchy.HierarchicalVAE` on the sentence encoding
(B, F, 1, 1) -- an LSTM or mean-pooled-embedding encoder -- with dense latents and residual MLP
stages (:func:`~biva.models.mlp.as_mlp`). The hierarchy's own likelihood is a placeholder: its
output features ``x_params`` (B, F, 1, 1) are c, and log p(x | z) is the decoder's.

Every model's ``forward(inputs, targets, lengths)`` (see :func:`biva.data.text.pad_batch`)
returns a :class:`TextOutput` in nats per sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from biva.config import HierarchyConfig, ModelConfig
from biva.data.text import BOS_ID, EOS_ID, PAD_ID
from biva.models.hierarchy import HierarchicalVAE
from biva.models.mlp import as_mlp
from biva.nn.gaussian import DiagonalGaussian, standard_normal_log_prob, std_from_raw


@dataclass
class TextOutput:
    """``loss``: training objective (scalar); ``nll`` -log p(x | z) (B,) nats (the LM: -log p(x));
    ``kl`` (B, G) log q - log p per latent group (G = 0 for the LM); ``cond`` (B, C) or None."""

    loss: Tensor
    nll: Tensor
    kl: Tensor
    cond: Tensor | None

    @property
    def bound(self) -> Tensor:
        """-ELBO (an upper bound of -log p(x); exact for the LM): (B,) nats per sentence."""
        return self.nll + self.kl.sum(1)


def sequence_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed cross-entropy per sentence over non-pad targets: logits (B, T, V) -> (B,) nats."""
    ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD_ID, reduction="none")
    return ce.sum(1)


def kl_objective(kl: Tensor, free_bits: float, kl_weight: float) -> Tensor:
    """The KL part of the loss per sentence: ``kl_weight * sum_g max(KL_g, free_bits)``, (B,)."""
    if kl.shape[1] == 0:
        return kl.new_zeros(kl.shape[0])
    return kl_weight * (kl.clamp_min(free_bits) if free_bits > 0 else kl).sum(1)


class SentenceDecoder(nn.Module):
    """LSTM p(w_t | w_<t, c) (or p(w_t | c) when not autoregressive) -> logits (B, T, V)."""

    def __init__(self, embedding: nn.Embedding, hidden: int, cond_dim: int = 0,
                 autoregressive: bool = True, cond_input: bool = True):
        super().__init__()
        if not autoregressive and not (cond_dim and cond_input):
            raise ValueError("a decoder without autoregression needs c as its step input")
        self.embedding, self.autoregressive = embedding, autoregressive
        self.cond_input = bool(cond_dim) and cond_input
        self.init = nn.Linear(cond_dim, 2 * hidden) if cond_dim else None
        in_size = (embedding.embedding_dim if autoregressive else 0) + (
            cond_dim if self.cond_input else 0)
        self.lstm = nn.LSTM(in_size, hidden, batch_first=True)
        self.out = nn.Linear(hidden, embedding.num_embeddings)

    def _state(self, cond: Tensor | None) -> tuple[Tensor, Tensor] | None:
        if self.init is None:
            return None
        h, c = self.init(cond).chunk(2, dim=1)
        return torch.tanh(h)[None].contiguous(), c[None].contiguous()

    def _inputs(self, tokens: Tensor, cond: Tensor | None) -> Tensor:
        parts = [self.embedding(tokens)] if self.autoregressive else []
        if self.cond_input:
            parts.append(cond[:, None, :].expand(-1, tokens.shape[1], -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def forward(self, inputs: Tensor, cond: Tensor | None = None) -> Tensor:
        """inputs (B, T) token ids (``<bos>`` first), cond (B, C) -> logits (B, T, V)."""
        out, _ = self.lstm(self._inputs(inputs, cond), self._state(cond))
        return self.out(out)

    @torch.no_grad()
    def generate(self, n: int, max_len: int, cond: Tensor | None = None, greedy: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
        """Token ids (n, <= max_len + 1): argmax (``greedy``) or ancestral sampling, until every
        row has emitted ``<eos>``."""
        device = self.out.weight.device
        prev = torch.full((n, 1), BOS_ID, dtype=torch.long, device=device)
        state = self._state(cond)
        rows, done = [], torch.zeros(n, dtype=torch.bool, device=device)
        for _ in range(max_len + 1):
            out, state = self.lstm(self._inputs(prev, cond), state)
            logits = self.out(out[:, -1])
            if greedy:
                nxt = logits.argmax(1)
            else:
                nxt = torch.multinomial(logits.softmax(1), 1, generator=generator)[:, 0]
            rows.append(nxt)
            done |= nxt == EOS_ID
            prev = nxt[:, None]
            if bool(done.all()):
                break
        return torch.stack(rows, dim=1)


class SentenceEncoder(nn.Module):
    """Targets ``w_1..w_n <eos>`` (B, T) -> an encoding (B, D): the LSTM's last state
    (``kind="lstm"``) or the mean of the embeddings (``kind="mean"``)."""

    def __init__(self, embedding: nn.Embedding, hidden: int, kind: str = "lstm"):
        super().__init__()
        if kind not in ("lstm", "mean"):
            raise ValueError(f"encoder: expected 'lstm' or 'mean', got {kind!r}")
        self.embedding, self.kind = embedding, kind
        self.lstm = nn.LSTM(embedding.embedding_dim, hidden, batch_first=True) \
            if kind == "lstm" else None
        self.out_dim = hidden if kind == "lstm" else embedding.embedding_dim

    def forward(self, targets: Tensor, lengths: Tensor) -> Tensor:
        """Token ids (B, T) with their lengths (B,) -> one feature vector per sentence
        (B, out_dim): the LSTM's last hidden state, or the mean embedding."""
        emb = self.embedding(targets)
        if self.lstm is None:
            mask = (targets != PAD_ID).unsqueeze(2).to(emb.dtype)
            return (emb * mask).sum(1) / lengths[:, None].to(emb.dtype)
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return h[-1]


class LSTMLanguageModel(nn.Module):
    """The LSTM baseline: p(x) = prod_t p(w_t | w_<t), no latent variables."""

    def __init__(self, vocab_size: int, embed: int = 128, hidden: int = 256):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=PAD_ID)
        self.decoder = SentenceDecoder(self.embedding, hidden)

    def forward(self, inputs: Tensor, targets: Tensor, lengths: Tensor, *,
                free_bits: float = 0.0, kl_weight: float = 1.0) -> TextOutput:
        """Teacher-forced -log p(x) per sentence in nats (B,); no latent, so no KL (B, 0)."""
        nll = sequence_nll(self.decoder(inputs), targets)
        return TextOutput(nll.mean(), nll, nll.new_zeros(len(nll), 0), None)

    def sample(self, n: int, max_len: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples (greedy decoding would give one sentence n times): (n, <= T)."""
        return self.decoder.generate(n, max_len, greedy=False, generator=generator)

    def reconstruct(self, inputs: Tensor, targets: Tensor, lengths: Tensor, max_len: int):
        """None: a model without a latent variable has nothing to reconstruct from."""
        return None


class RNNVAE(nn.Module):
    """Bowman et al. (2016): LSTM encoder -> q(z | x) diagonal Gaussian -> c = z, which sets the
    decoder's initial state (``cond_input=False``, as in the paper) -> LSTM decoder."""

    def __init__(self, vocab_size: int, embed: int = 128, hidden: int = 256, latent: int = 32,
                 autoregressive: bool = True, min_std: float = 1e-3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=PAD_ID)
        self.encoder = SentenceEncoder(self.embedding, hidden, "lstm")
        self.head = nn.Linear(hidden, 2 * latent)
        self.decoder = SentenceDecoder(self.embedding, hidden, latent, autoregressive,
                                       cond_input=not autoregressive)
        self.latent, self.min_std = latent, min_std

    def posterior(self, targets: Tensor, lengths: Tensor) -> DiagonalGaussian:
        """q(z | x): a diagonal Gaussian over (B, latent) from the LSTM encoder."""
        mu, raw = self.head(self.encoder(targets, lengths)).chunk(2, dim=1)
        return DiagonalGaussian(mu, std_from_raw(raw, self.min_std))

    def forward(self, inputs: Tensor, targets: Tensor, lengths: Tensor, *,
                free_bits: float = 0.0, kl_weight: float = 1.0) -> TextOutput:
        """One-sample ELBO terms: -log p(x|z) (B,) and KL (B, 1) in nats; the loss applies
        free bits and the KL weight."""
        q = self.posterior(targets, lengths)
        z = q.sample()
        kl = (q.log_prob(z) - standard_normal_log_prob(z))[:, None]  # one-sample estimate
        nll = sequence_nll(self.decoder(inputs, z), targets)
        loss = (nll + kl_objective(kl, free_bits, kl_weight)).mean()
        return TextOutput(loss, nll, kl, z)

    def sample(self, n: int, max_len: int, generator: torch.Generator | None = None) -> Tensor:
        """Greedy decoding of z ~ N(0, I) (Table 8): (n, <= max_len + 1)."""
        z = torch.randn(n, self.latent, generator=generator, device=self.head.weight.device)
        return self.decoder.generate(n, max_len, z)

    @torch.no_grad()
    def reconstruct(self, inputs: Tensor, targets: Tensor, lengths: Tensor, max_len: int
                    ) -> Tensor:
        """Greedy decoding of z ~ q(z | x) (Table 9)."""
        z = self.posterior(targets, lengths).sample()
        return self.decoder.generate(len(z), max_len, z)


def text_hierarchy_config(features: int, latents: tuple[int, ...], blocks: int = 1,
                          variant: str = "biva") -> ModelConfig:
    """The hierarchy over a sentence encoding (F, 1, 1): dense latents, residual MLP stages."""
    return HierarchyConfig(
        variant=variant, input_shape=(features, 1, 1), likelihood="gaussian",
        likelihood_std=1.0, latents=tuple(latents), latent_type="dense", filters=(features,),
        kernels=(1,), strides=(1,), blocks=blocks, dropout_q=0.0, dropout_p=0.0)


class TextBIVA(nn.Module):
    """Encoder -> (B, F, 1, 1) -> BIVA hierarchy (z_1..z_L) -> c = TD features (B, F) ->
    LSTM decoder (autoregressive or not)."""

    def __init__(self, vocab_size: int, embed: int = 128, hidden: int = 256,
                 features: int = 128, latents: tuple[int, ...] = (32, 28, 24, 20, 16, 12, 8),
                 blocks: int = 1, encoder: str = "lstm", autoregressive: bool = True,
                 variant: str = "biva"):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=PAD_ID)
        self.encoder = SentenceEncoder(self.embedding, hidden, encoder)
        self.to_features = nn.Linear(self.encoder.out_dim, features)
        self.hierarchy = as_mlp(HierarchicalVAE(
            text_hierarchy_config(features, latents, blocks, variant)))
        self.decoder = SentenceDecoder(self.embedding, hidden, features, autoregressive)

    def encode(self, targets: Tensor, lengths: Tensor) -> Tensor:
        """The hierarchy's input: (B, F, 1, 1)."""
        return self.to_features(self.encoder(targets, lengths))[:, :, None, None]

    @torch.no_grad()
    def initialize(self, targets: Tensor, lengths: Tensor) -> None:
        """Data-dependent init of the hierarchy's weight-normed layers on one batch."""
        self.hierarchy.initialize(self.encode(targets, lengths))

    def forward(self, inputs: Tensor, targets: Tensor, lengths: Tensor, *,
                free_bits: float = 0.0, kl_weight: float = 1.0) -> TextOutput:
        """One pass: -log p(x|z) per sentence (B,) and the hierarchy's KL per group (B, G),
        nats; the loss applies free bits per group and the KL weight."""
        out = self.hierarchy(self.encode(targets, lengths))
        cond = out.x_params.flatten(1)
        nll = sequence_nll(self.decoder(inputs, cond), targets)
        loss = (nll + kl_objective(out.kl, free_bits, kl_weight)).mean()
        return TextOutput(loss, nll, out.kl, cond)

    def sample(self, n: int, max_len: int, generator: torch.Generator | None = None) -> Tensor:
        """Greedy decoding of z ~ p(z) (Table 8): (n, <= max_len + 1)."""
        cond = self.hierarchy.sample_params(n, generator=generator).flatten(1)
        return self.decoder.generate(n, max_len, cond)

    @torch.no_grad()
    def reconstruct(self, inputs: Tensor, targets: Tensor, lengths: Tensor, max_len: int
                    ) -> Tensor:
        """Greedy decoding of z ~ q(z | x) (Table 9)."""
        cond = self.hierarchy(self.encode(targets, lengths)).x_params.flatten(1)
        return self.decoder.generate(len(cond), max_len, cond)
