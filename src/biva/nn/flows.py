"""Inverse autoregressive flows (Kingma et al. 2016) for a latent group's posterior, as the
NVAE-style model appends them to its encoder: masked convolutions over the group's feature
map, so that each position's transform reads only the positions before it.

One step maps z (N, C, r, r) to ``z' = g * z + (1 - g) * m`` with ``(m, s) = net(z_<p, h)``
and ``g = sigmoid(s + 2)`` per position p (raster order; every second step runs in the
reversed order), h the posterior's context features. The Jacobian is triangular with
diagonal g, so ``log |det dz'/dz| = sum log g`` and ``log q(z_T) = log q_0(z_0) -
sum_t log |det|``: the bounds stay bounds. NVAE's cells shift only (g = 1, log det 0); the
gated scale here is Kingma et al.'s update, which starts close to the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: s + GATE_BIAS is the gate's logit: a new step starts as z' = sigmoid(GATE_BIAS) z.
GATE_BIAS = 2.0


class MaskedConv2d(nn.Conv2d):
    """A k x k convolution that reads, at output position p, only the input positions before
    p in raster order (``strict=True``, PixelCNN's mask A) or up to p (mask B)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, strict: bool):
        super().__init__(in_ch, out_ch, kernel, padding=kernel // 2)
        mask = torch.zeros(kernel, kernel)
        c = kernel // 2
        mask[:c] = 1
        mask[c, :c + (0 if strict else 1)] = 1
        self.register_buffer("mask", mask.view(1, 1, kernel, kernel), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class IAFStep(nn.Module):
    """One autoregressive step on z (N, C, r, r) with context h (N, H, r, r); see the module.
    ``reverse``: the step runs in reversed raster order."""

    def __init__(self, z_ch: int, ctx_ch: int, hidden: int, reverse: bool):
        super().__init__()
        self.reverse = reverse
        self.z_in = MaskedConv2d(z_ch, hidden, 3, strict=True)
        self.ctx_in = nn.Conv2d(ctx_ch, hidden, 1)
        self.mid = MaskedConv2d(hidden, hidden, 3, strict=False)
        self.out = MaskedConv2d(hidden, 2 * z_ch, 3, strict=False)
        nn.init.zeros_(self.out.weight)   # starts as z' = sigmoid(2) z: near the identity
        nn.init.zeros_(self.out.bias)

    def forward(self, z: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """(z', log |det dz'/dz|): (N, C, r, r) and (N,) nats, at least float32."""
        if self.reverse:
            z, ctx = z.flip(-2, -1), ctx.flip(-2, -1)
        h = F.elu(self.z_in(z) + self.ctx_in(ctx))
        wide = torch.promote_types(z.dtype, torch.float32)   # float32 even under bf16 autocast
        m, s = self.out(F.elu(self.mid(h))).to(wide).chunk(2, dim=1)
        log_gate = F.logsigmoid(s + GATE_BIAS)
        gate = log_gate.exp()
        z = gate * z.to(wide) + (1 - gate) * m
        if self.reverse:
            z = z.flip(-2, -1)
        return z, log_gate.flatten(1).sum(1)


class PosteriorFlow(nn.Module):
    """``steps`` IAF steps, alternating raster and reversed order: z_0 -> z_T and the summed
    log-determinant (N,)."""

    def __init__(self, z_ch: int, ctx_ch: int, hidden: int, steps: int):
        super().__init__()
        self.steps = nn.ModuleList([IAFStep(z_ch, ctx_ch, hidden, reverse=t % 2 == 1)
                                    for t in range(steps)])

    def forward(self, z: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        log_det = z.new_zeros(z.shape[0], dtype=torch.promote_types(z.dtype, torch.float32))
        for step in self.steps:
            z, ld = step(z, ctx)
            log_det = log_det + ld
        return z, log_det
