"""Semi-supervised BIVA: a class variable y as in M2 (Kingma et al. 2014), appendix F.

Generative model (eq. 16): ``p(x, y, z) = p(x | z, y) p(z_L) p(y) prod_i p(z_i | z_>i, y)`` with
p(y) uniform. y enters every TD stage (so every conditional prior, p(x | z, y) and the TD
inference path) as a learned per-class feature map added to the stage's input features after
the embedding of z (the ``td_context`` hook of :class:`HierarchicalVAE`). For dense latents the
map is
a full (F, r, r) table per class, which equals embedding ``<z_{i+1}; onehot(y)>`` with the
linear embedding; for conv latents it is a per-channel (F, 1, 1) offset, like concatenating
constant one-hot maps to z before the conv. The BU path (z^BU, q(z_L | x)) does not see y.

Inference adds the classifier ``q(y | x, z^BU_{<L})`` (eqs. 12-14): its own deterministic
hierarchy with the BU stages' shapes, stage 1 fed by x, stage i by stage i - 1, and every block
of stage i given z^BU_i (embedded) as its auxiliary input; a dense layer gives the logits.
Variants without z^BU (the LVAEs) feed the deterministic BU features d~_{i,M} instead.

Bounds per example (nats), with L(x, y) = log p(x | z, y) + log p(y) + log p(z) - log q(z | x, y):

* labelled (eq. 17/18): ``F = -L(x, y) + alpha * (-log q(y | x, z^BU))``;
* unlabelled (eq. 19): ``U = -sum_y q(y | x) (L(x, y) - log q(y | x))``, summed exactly over the
  C classes in one batched TD pass (rows replicated class-major) that reuses the single,
  y-independent BU pass, so every class sees the same z^BU the classifier saw;
* the importance weight ``log_weight`` of an unlabelled row is ``logsumexp_y L(x, y)``:
  ``sum_y p(x, y, z_y) / q(z_y | x, y)`` is unbiased for p(x), so L_K -> log p(x) as K grows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biva.config import HierarchyConfig
from biva.models.base import HierarchyOutput
from biva.models.hierarchy import BottomUp, HierarchicalVAE
from biva.models.latents import Encoding
from biva.nn.blocks import Stage, elu_flatten
from biva.nn.gaussian import DiagonalGaussian, LatentEmbedding, repeat_batch
from biva.nn.weightnorm import WNLinear, data_dependent_init

UNLABELLED = -1
# "balanced": mean F over the labelled rows + mean U over the unlabelled rows, y only in the
#   generative model and the TD path (the usual M2 port).
# "paper": eqs. 15-20 as written: y also in q(z_L | x, y), and the loss the data-set sum of
#   eq. 20 per example: (N_l * mean F + N_u * mean U) / (N_l + N_u).
# "supervised": the classifier alone on the labelled rows (cross-entropy), a baseline.
OBJECTIVES = ("balanced", "paper", "supervised")


def default_alpha(n_total: int, n_labelled: int) -> float:
    """Classification weight of Maaløe et al. (2016): 0.1 * N_total / N_labelled."""
    if n_labelled < 1:
        raise ValueError(f"need at least one labelled example, got {n_labelled}")
    return 0.1 * n_total / n_labelled


@dataclass
class SemiSupervisedOutput(HierarchyOutput):
    """:class:`HierarchyOutput` plus the classifier and the per-row bounds. N rows, sample-major.

    ``log_weight``: labelled rows L(x, y), unlabelled rows logsumexp_y L(x, y) (nats, (N,));
    ``log_px`` and ``kl`` of unlabelled rows are q(y|x)-weighted over classes; ``x_params`` of
    an unlabelled row are those of its most probable class. ``bound``: L(x, y) or -U (eq. 19),
    (N,). ``logits``: (N, C) of q(y | x, z^BU). ``class_bounds``: (N_u, C) L(x, y) of the
    unlabelled rows in order. ``ce``: (N,) -log q(y | x, z^BU) (0 for unlabelled rows).
    ``class_log_px`` (N_u, C) and ``class_kl`` (N_u, C, G): log p(x | z, y) and the KL per
    group of the unlabelled rows for each class (what training's free bits apply to).
    ``latents``/``posteriors`` hold the TD rows: labelled rows, then unlabelled class-major.
    """

    bound: Tensor | None = None
    logits: Tensor | None = None
    labels: Tensor | None = None
    class_bounds: Tensor | None = None
    ce: Tensor | None = None
    class_log_px: Tensor | None = None
    class_kl: Tensor | None = None


class ClassifierHierarchy(nn.Module):
    """q(y | x, z^BU_{<L}) on its own deterministic hierarchy (appendix F, eqs. 12-14).

    ``forward(x, bottom_up)``: x (N, C, H, W) and a ``_bottom_up`` result at N rows -> logits
    (N, num_classes). ``config.classifier_input``: the z^BU draws ("sample") or their posterior
    means ("mean").
    """

    def __init__(self, config: HierarchyConfig, num_classes: int, stochastic_bu: bool):
        super().__init__()
        L = config.n_layers
        r = config.spatial_sizes()
        Fs = (0,) + config.per_layer("filters")
        K = (0,) + config.per_layer("kernels")
        n = (0,) + tuple(config.latents)
        conv = config.latent_type == "conv"
        lk = [config.latent_kernel or r[i] for i in range(L + 1)]
        self.use_z = stochastic_bu
        self.from_means = config.classifier_input == "mean"   # z^BU means, not draws
        self.n_stages = max(L - 1, 1)   # stages 1..L-1 see z^BU_1..z^BU_{L-1}
        self.has_aux = [i < L for i in range(1, self.n_stages + 1)]
        self.stages = nn.ModuleList()
        self.embeds = nn.ModuleList()
        for i in range(1, self.n_stages + 1):
            aux = self.has_aux[i - 1]
            in_ch = config.input_shape[0] if i == 1 else Fs[i - 1]
            self.stages.append(Stage(in_ch, Fs[i], r[i - 1], r[i], config.blocks, K[i],
                                     config.dropout_q, skip_ch=Fs[i] if aux else 0,
                                     skip_size=r[i]))
            if aux and stochastic_bu:
                self.embeds.append(LatentEmbedding(n[i], Fs[i], r[i], conv, lk[i]))
        S = self.n_stages
        # A small init scale starts q(y|x) close to uniform (no confident random guesses).
        self.out = WNLinear(Fs[S] * r[S] * r[S], num_classes, init_scale=0.1)

    def forward(self, x: Tensor, bottom_up: BottomUp) -> Tensor:
        """Logits of q(y | x, z^BU) (N, num_classes) from x and the hierarchy's bottom-up
        pass (``HierarchicalVAE._bottom_up`` at N rows)."""
        bu = BottomUp(*bottom_up)
        h = x
        for i, stage in enumerate(self.stages):
            skips = None
            if self.has_aux[i]:
                if self.use_z:   # BIVA, VAE: z^BU_i (its draw or its mean)
                    a = self.embeds[i]([bu.q_bu[i].mu if self.from_means else bu.z_bu[i]])
                else:            # the LVAEs have no z^BU: the deterministic d~_{i,M}
                    a = bu.features[i]
                skips = [a] * len(stage.blocks)
            h = stage(h, skips)[-1]
        return self.out(elu_flatten(h))


def _gather_rows(bottom_up: BottomUp, idx: Tensor) -> BottomUp:
    """A ``_bottom_up`` result restricted to (and repeated by) the row indices ``idx``."""
    def g(q: DiagonalGaussian) -> DiagonalGaussian:
        return DiagonalGaussian(q.mu.index_select(0, idx), q.sigma.index_select(0, idx))

    return BottomUp([t.index_select(0, idx) for t in bottom_up.features],
                    [g(q) for q in bottom_up.q_bu],
                    [z.index_select(0, idx) for z in bottom_up.z_bu], g(bottom_up.q_top))


class SemiSupervisedBIVA(HierarchicalVAE):
    """The hierarchy of ``config`` with a class variable y (C = ``num_classes``), appendix F.

    ``model(x)`` marginalizes y (eq. 19); ``model(x, labels=y)`` with y (B,) int, -1 for
    unlabelled rows, gives the combined objective of eq. 20 (``alpha`` weights the
    classification loss of eq. 18). :meth:`classify` returns q(y|x) (B, C); :meth:`sample`
    takes optional classes ``y``.
    """

    def __init__(self, config: HierarchyConfig, num_classes: int, alpha: float = 1.0,
                 objective: str = "balanced", n_labelled: int | None = None,
                 n_unlabelled: int | None = None):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        super().__init__(config)
        self.num_classes = int(num_classes)
        self.alpha = float(alpha)
        self.objective = objective
        # Weights of the labelled and unlabelled means in the loss (eq. 20 for "paper": the
        # data set's split sizes, which no default can stand for).
        self.loss_weights = (1.0, 1.0)
        if objective == "paper":
            if (n_labelled or 0) < 1 or (n_unlabelled or 0) < 1:
                raise ValueError(f"objective 'paper' weighs eq. 20 by the split sizes: expected "
                                 f"n_labelled and n_unlabelled >= 1, found {n_labelled} and "
                                 f"{n_unlabelled}")
            n = n_labelled + n_unlabelled
            self.loss_weights = (n_labelled / n, n_unlabelled / n)
        self.classifier = ClassifierHierarchy(config, num_classes, self.variant.stochastic_bu)
        r = config.spatial_sizes()
        Fs = (0,) + config.per_layer("filters")
        dense = config.latent_type == "dense"
        self.y_embed = nn.ParameterList()  # y_embed[i]: class -> input features of TD stage i
        for i in range(self.n_layers):
            side = r[i + 1] if dense else 1
            # Random (not zero) rows: classes differ from the start, which keeps q(y|x) on
            # unlabelled data from being pushed towards uniform while y has no effect yet.
            self.y_embed.append(nn.Parameter(0.1 * torch.randn(num_classes, Fs[i + 1],
                                                               side, side)))
        # Eq. 15: q(z_L | x, y), y added to the features of the top posterior's head.
        self.top_y_embed = None
        if objective == "paper":
            side = r[-1] if dense else 1
            self.top_y_embed = nn.Parameter(0.1 * torch.randn(num_classes, Fs[-1], side, side))

    # ----------------------------------------------------------------------------- pieces
    def class_context(self, y: Tensor) -> list[Tensor]:
        """Per-TD-stage class features: y (N,) int classes or (N, C) probabilities."""
        if y.dim() == 1:
            return [e.index_select(0, y) for e in self.y_embed]
        return [torch.einsum("nc,cfhw->nfhw", y.to(e.dtype), e) for e in self.y_embed]

    def classify_logits(self, x: Tensor, n_samples: int = 1) -> Tensor:
        """Logits of q(y | x, z^BU) for n_samples draws of z^BU: (n_samples * B, C)."""
        bu = self._bottom_up(x, n_samples)
        return self.classifier(repeat_batch(x, n_samples), bu)

    @torch.no_grad()
    def classify(self, x: Tensor, n_samples: int = 1) -> Tensor:
        """q(y | x) for x (B, C, H, W): (B, num_classes), averaged over n_samples z^BU draws."""
        probs = F.softmax(self.classify_logits(x, n_samples).float(), dim=1)
        return probs.view(n_samples, x.shape[0], -1).mean(0)

    # ----------------------------------------------------------------------------- the bound
    def forward(self, x: Tensor, *, n_samples: int = 1, prior_layers: int = 0,
                labels: Tensor | None = None) -> SemiSupervisedOutput:
        """x (B, C, H, W), labels (B,) int (-1: unlabelled; None: all) -> N = n_samples * B rows.

        ``loss`` = w_l * mean over labelled rows of F (eq. 18) + w_u * mean over unlabelled
        rows of U (eq. 19), (w_l, w_u) = ``loss_weights`` (1, 1, or N_l/N, N_u/N for the
        "paper" objective); the "supervised" objective's loss is the labelled rows' mean
        cross-entropy alone. Training's free bits and KL weight:
        :func:`biva.objectives.training.semi_supervised_loss`, from ``class_log_px`` and
        ``class_kl``.
        """
        C = self.num_classes
        bu = self._bottom_up(x, n_samples)
        xs = repeat_batch(x, n_samples)
        logits = self.classifier(xs, bu)
        log_q = F.log_softmax(logits.float(), dim=1)
        lab = self._row_labels(labels, x, n_samples)
        N = lab.numel()
        li = torch.nonzero(lab >= 0).flatten()
        ui = torch.nonzero(lab < 0).flatten()
        n_l, n_u = li.numel(), ui.numel()
        td = self._class_td_pass(xs, bu, lab, li, ui, prior_layers)
        bound = td.log_weight - math.log(C)
        ce = log_q.new_zeros(N)
        parts = {"log_weight": bound[:n_l], "bound": bound[:n_l], "log_px": td.log_px[:n_l],
                 "kl": td.kl[:n_l], "x_params": td.x_params[:n_l]}
        unl = {"class_bounds": bound.new_zeros((0, C)), "class_log_px": bound.new_zeros((0, C)),
               "class_kl": td.kl.new_zeros((0, C, td.kl.shape[1]))}
        if n_l:
            ce = ce.index_copy(0, li, -log_q[li, lab[li]])
        if n_u:
            unl = self._unlabelled_terms(td, log_q[ui], bound, n_l)
            parts = {k: self._merge(N, li, v, ui, unl[k]) for k, v in parts.items()}
        loss = self._loss(parts["bound"], ce, li, ui, logits)
        return SemiSupervisedOutput(
            loss=loss, log_weight=parts["log_weight"], log_px=parts["log_px"], kl=parts["kl"],
            group_names=list(self.group_names), x_params=parts["x_params"],
            latents=td.latents, posteriors=td.posteriors, n_samples=n_samples,
            bound=parts["bound"], logits=logits, labels=lab, ce=ce,
            class_bounds=unl["class_bounds"], class_log_px=unl["class_log_px"],
            class_kl=unl["class_kl"])

    def _loss(self, bound: Tensor, ce: Tensor, li: Tensor, ui: Tensor, logits: Tensor
              ) -> Tensor:
        """Eq. 20 from the rows' bounds (L(x, y) labelled, -U unlabelled) and cross-entropies."""
        if self.objective == "supervised":
            return ce[li].mean() if li.numel() else logits.sum() * 0.0
        loss = bound.new_zeros(())
        w_l, w_u = self.loss_weights
        if li.numel():
            loss = loss + w_l * (-bound[li] + self.alpha * ce[li]).mean()
        if ui.numel():
            loss = loss - w_u * bound[ui].mean()
        return loss

    @staticmethod
    def _row_labels(labels: Tensor | None, x: Tensor, n_samples: int) -> Tensor:
        """The (N,) label of each sample row (-1: unlabelled), checked against x's batch."""
        B = x.shape[0]
        if labels is None:
            return torch.full((n_samples * B,), UNLABELLED, dtype=torch.long, device=x.device)
        if labels.shape != (B,):
            raise ValueError(f"labels: expected shape ({B},), found {tuple(labels.shape)}")
        return repeat_batch(labels.to(device=x.device, dtype=torch.long), n_samples)

    def _class_td_pass(self, xs: Tensor, bu: BottomUp, lab: Tensor, li: Tensor, ui: Tensor,
                       prior_layers: int) -> HierarchyOutput:
        """One TD pass: labelled rows with their class, then the unlabelled rows once per
        class (class-major), all reusing the BU pass ``bu``."""
        C, n_l, n_u = self.num_classes, li.numel(), ui.numel()
        if n_u == 0:
            rows, cls = li, lab
        else:
            rows = torch.cat([li, ui.repeat(C)])
            cls = torch.cat([lab[li], torch.arange(C, device=xs.device).repeat_interleave(n_u)])
        same = n_u == 0 and n_l == lab.numel()   # all labelled, in order: no gather needed
        bu_rows = bu if same else _gather_rows(bu, rows)
        if self.top_y_embed is not None:
            # q(z_L | x, y): the BU features are y-free and shared; only the head sees y.
            features = bu_rows.features[-1] + self.top_y_embed.index_select(0, cls)
            bu_rows = bu_rows._replace(q_top=self.bu_layers[-1].posterior(features))
        return super().forward(xs if same else xs.index_select(0, rows),
                               prior_layers=prior_layers, td_context=self.class_context(cls),
                               bottom_up=bu_rows)

    def _unlabelled_terms(self, td: HierarchyOutput, lq: Tensor, bound: Tensor, n_l: int
                          ) -> dict[str, Tensor]:
        """The unlabelled rows' part (rows n_l on of the TD pass, class-major) given log
        q(y|x) ``lq`` (N_u, C): their per-row results (log_weight, bound = -U (eq. 19), log_px,
        kl, x_params) and per class L(x, y) ``class_bounds`` (N_u, C), log p(x|z, y)
        ``class_log_px`` (N_u, C) and the KL per group ``class_kl`` (N_u, C, G)."""
        C, n_u = self.num_classes, lq.shape[0]
        q = lq.exp()
        Lc = bound[n_l:].view(C, n_u).t()                 # (N_u, C): L(x, y)
        log_px = td.log_px[n_l:].view(C, n_u).t()
        kl_cu = td.kl[n_l:].view(C, n_u, -1)
        best = lq.argmax(1)
        xp_u = td.x_params[n_l:].view(C, n_u, *td.x_params.shape[1:])
        return {"log_weight": torch.logsumexp(Lc, 1), "bound": (q * (Lc - lq)).sum(1),
                "log_px": (q * log_px).sum(1), "kl": torch.einsum("uc,cug->ug", q, kl_cu),
                "x_params": xp_u[best, torch.arange(n_u, device=lq.device)],
                "class_bounds": Lc, "class_log_px": log_px, "class_kl": kl_cu.transpose(0, 1)}

    @staticmethod
    def _merge(n: int, li: Tensor, a: Tensor, ui: Tensor, b: Tensor) -> Tensor:
        # Rows back in input order: labelled rows from a, unlabelled rows from b.
        out = b.new_zeros((n, *b.shape[1:]))
        if li.numel():
            out = out.index_copy(0, li, a.to(b.dtype))
        return out.index_copy(0, ui, b)

    @staticmethod
    @torch.no_grad()
    def batch_statistics(out: SemiSupervisedOutput) -> dict[str, Tensor]:
        """Detached statistics of a training batch's output (CPU float scalars): labelled rows
        ``n_labelled``, their mean cross-entropy ``ce`` (nats), ``train_error`` (fraction) and
        ``bound_labelled``; the unlabelled rows' ``bound_unlabelled`` (-U, nats) and the
        entropy of q(y|x) ``entropy_q_y`` (nats)."""
        log_q = F.log_softmax(out.logits.float(), dim=1)
        lab = out.labels
        li, ui = torch.nonzero(lab >= 0).flatten(), torch.nonzero(lab < 0).flatten()
        stats = {"n_labelled": torch.tensor(float(li.numel()))}
        if li.numel():
            stats["ce"] = -log_q[li, lab[li]].mean()
            stats["train_error"] = (log_q[li].argmax(1) != lab[li]).float().mean()
            stats["bound_labelled"] = out.bound[li].mean()
        if ui.numel():
            stats["bound_unlabelled"] = out.bound[ui].mean()
            stats["entropy_q_y"] = -(log_q[ui].exp() * log_q[ui]).sum(1).mean()
        return {k: v.detach().float().cpu() for k, v in stats.items()}

    def loss(self, x_l: Tensor, y_l: Tensor, x_u: Tensor | None = None
             ) -> SemiSupervisedOutput:
        """Eq. 20 on a labelled batch (x_l, y_l (B_l,)) and an optional unlabelled batch x_u:
        the output of one pass on their concatenation."""
        labels = y_l.to(torch.long)
        x = x_l
        if x_u is not None and x_u.shape[0]:
            x = torch.cat([x_l, x_u])
            labels = torch.cat([labels, labels.new_full((x_u.shape[0],), UNLABELLED)])
        return self(x, labels=labels)

    # ----------------------------------------------------------------------------- init
    @torch.no_grad()
    def initialize(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Data-dependent weight-norm init on x (B, C, H, W); classes from ``labels`` or, if
        None, the uniform mixture of the class features (one TD pass, not C)."""
        def run() -> None:
            bu = self._bottom_up(x, 1)
            self.classifier(x, bu)
            if labels is None:
                y = x.new_full((x.shape[0], self.num_classes), 1.0 / self.num_classes)
            else:
                y = labels.to(device=x.device, dtype=torch.long)
            if self.top_y_embed is not None:
                emb = (self.top_y_embed.index_select(0, y) if y.dim() == 1 else
                       torch.einsum("nc,cfhw->nfhw", y, self.top_y_embed))
                bu = bu._replace(q_top=self.bu_layers[-1].posterior(bu.features[-1] + emb))
            HierarchicalVAE.forward(self, x, td_context=self.class_context(y), bottom_up=bu)

        data_dependent_init(self, run)
        self.initialized.fill_(True)

    # ----------------------------------------------------------------------------- generation
    def _classes(self, n: int, y: Tensor | Sequence[int] | int | None,
                 generator: torch.Generator | None) -> Tensor:
        device = self.out_conv.v.device
        if y is None:  # y ~ p(y), uniform
            gen_device = generator.device if generator is not None else device
            return torch.randint(self.num_classes, (n,), generator=generator,
                                 device=gen_device).to(device)
        y = torch.as_tensor(y, dtype=torch.long, device=device)
        y = y.expand(n) if y.dim() == 0 else y
        if y.shape != (n,) or bool(((y < 0) | (y >= self.num_classes)).any()):
            raise ValueError(f"y: expected {n} classes in 0..{self.num_classes - 1}")
        return y

    @torch.no_grad()
    def sample(self, n: int, temperature: float | Sequence[float] = 1.0,
               generator: torch.Generator | None = None, mode: str = "mean",
               y: Tensor | Sequence[int] | int | None = None) -> Tensor:
        """n images (n, C, H, W) of classes ``y`` (n ints, one int, or None: y ~ p(y))."""
        return self.to_images(self.sample_params(n, temperature, generator, y=y), mode)

    @torch.no_grad()
    def sample_params(self, n: int, temperature: float | Sequence[float] = 1.0,
                      generator: torch.Generator | None = None,
                      td_context: Sequence[Tensor | None] | None = None,
                      y: Tensor | Sequence[int] | int | None = None) -> Tensor:
        """p(x|z, y) parameters for n prior draws; y as in :meth:`sample`."""
        if td_context is None:
            td_context = self.class_context(self._classes(n, y, generator))
        return super().sample_params(n, temperature, generator, td_context=td_context)

    @torch.no_grad()
    def generate_from_top(self, z_top: Tensor, temperature: float | Sequence[float] = 1.0,
                          generator: torch.Generator | None = None,
                          td_context: Sequence[Tensor | None] | None = None,
                          y: Tensor | Sequence[int] | int | None = None) -> Tensor:
        """p(x|z, y) parameters for a given z_L (B, ...); y as in :meth:`sample`."""
        if td_context is None:
            td_context = self.class_context(self._classes(z_top.shape[0], y, generator))
        return super().generate_from_top(z_top, temperature, generator, td_context=td_context)

    def _generate(self, given: Mapping[str, Tensor], n: int, temps: list[float],
                  generator: torch.Generator | None,
                  td_context: Sequence[Tensor | None] | None) -> Tensor:
        if td_context is None:
            raise ValueError("semi-supervised model: its decoder reads a class; use "
                             "sample(..., y=...) or generate_from_top(..., y=...)")
        return super()._generate(given, n, temps, generator, td_context)

    def encode(self, x: Tensor, mode: str = "sample") -> Encoding:
        """Not defined here: q(z|x, y) needs a class (the latent API covers the unsupervised
        families)."""
        raise ValueError("semi-supervised model: its posterior reads a class; the latent API "
                         "(encode, decode, reconstruct, interpolate) covers the unsupervised "
                         "families")

    @torch.no_grad()
    def class_grid(self, per_class: int, temperature: float | Sequence[float] = 1.0,
                   generator: torch.Generator | None = None, mode: str = "mean") -> Tensor:
        """per_class samples of every class, class-major: (C * per_class, C_img, H, W)."""
        y = torch.arange(self.num_classes).repeat_interleave(per_class)
        return self.sample(len(y), temperature, generator, mode, y=y)
