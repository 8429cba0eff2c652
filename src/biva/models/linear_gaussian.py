"""A linear-Gaussian hierarchy with an exact log p(x): the reference the bounds are tested on.

Generative: z_L ~ N(0, I), z_i | z_{i+1} ~ N(A_i z_{i+1} + b_i, diag(s_i^2)), x | z_1 likewise.
Inference: a bottom-up Gaussian chain q(z_1 | x) q(z_2 | z_1) ... (the VAE factorization). With
``exact_posterior=True`` each factor is the true conditional (full covariance), so every
importance weight equals p(x); otherwise the factors are random diagonal Gaussians. It takes
the same ``forward(x, n_samples=, prior_layers=)`` call as :class:`HierarchicalVAE`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from biva.models.hierarchy import HierarchyOutput


class LinearGaussianHierarchy(nn.Module):
    """dims = (d_x, d_1, ..., d_L); all computation in float64. x: (B, d_x)."""

    def __init__(self, dims: tuple[int, ...], seed: int = 0, exact_posterior: bool = False,
                 noise_std: float = 0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dims, self.L, self.exact = tuple(dims), len(dims) - 1, exact_posterior
        d = self.dims

        def rand(*shape, scale=1.0):
            return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

        # A[i] maps z_{i+1} to the mean of z_i (i = 0 is x).
        self.A = [rand(d[i], d[i + 1], scale=1 / math.sqrt(d[i + 1])) for i in range(self.L)]
        self.b = [rand(d[i], scale=0.3) for i in range(self.L)]
        self.s = [noise_std + 0.5 * torch.rand(d[i], generator=g, dtype=torch.float64)
                  for i in range(self.L)]
        # Prior marginals m_i, S_i of z_i (i = 0 is x).
        self.m, self.S = [None] * (self.L + 1), [None] * (self.L + 1)
        self.m[self.L] = torch.zeros(d[self.L], dtype=torch.float64)
        self.S[self.L] = torch.eye(d[self.L], dtype=torch.float64)
        for i in range(self.L - 1, -1, -1):
            self.m[i] = self.A[i] @ self.m[i + 1] + self.b[i]
            self.S[i] = self.A[i] @ self.S[i + 1] @ self.A[i].T + torch.diag(self.s[i] ** 2)
        # Random diagonal q(z_{i+1} | z_i): mean W z_i + c, std t.
        self.W = [rand(d[i + 1], d[i], scale=0.5 / math.sqrt(d[i])) for i in range(self.L)]
        self.c = [rand(d[i + 1], scale=0.3) for i in range(self.L)]
        self.t = [0.5 + 0.5 * torch.rand(d[i + 1], generator=g, dtype=torch.float64)
                  for i in range(self.L)]

    def sample_data(self, n: int, seed: int = 0) -> Tensor:
        """n draws of x from the generative model (ancestral, seeded): (n, d_x) float64."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.dims[-1], generator=g, dtype=torch.float64)
        for i in range(self.L - 1, -1, -1):
            z = z @ self.A[i].T + self.b[i] + self.s[i] * torch.randn(
                n, self.dims[i], generator=g, dtype=torch.float64)
        return z

    def log_marginal(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats: (B,)."""
        return MultivariateNormal(self.m[0], self.S[0]).log_prob(x.double())

    def _q(self, i: int, below: Tensor) -> MultivariateNormal:
        """q(z_{i+1} | z_i = below) (i = 0: below is x)."""
        if self.exact:
            S, A = self.S[i + 1], self.A[i]
            gain = S @ A.T @ torch.linalg.inv(self.S[i])
            mean = self.m[i + 1] + (below - (A @ self.m[i + 1] + self.b[i])) @ gain.T
            cov = S - gain @ A @ S
            return MultivariateNormal(mean, 0.5 * (cov + cov.T))
        mean = below @ self.W[i].T + self.c[i]
        return MultivariateNormal(mean, torch.diag(self.t[i] ** 2))

    def _p(self, i: int, above: Tensor) -> MultivariateNormal:
        """p(z_i | z_{i+1} = above) (i = 0: the likelihood p(x | z_1))."""
        return MultivariateNormal(above @ self.A[i].T + self.b[i], torch.diag(self.s[i] ** 2))

    def forward(self, x: Tensor, *, n_samples: int = 1, prior_layers: int = 0) -> HierarchyOutput:
        """Log importance weights of the L^{>k} estimator, same rules as HierarchicalVAE."""
        x = x.double().repeat(n_samples, 1)
        k = prior_layers
        a, q_lp = [x], []
        for i in range(self.L):                       # BU chain: a_1 .. a_L from q
            q = self._q(i, a[-1])
            a.append(q.sample())
            q_lp.append(q.log_prob(a[-1]))            # log q(a_{i+1} | a_i)
        z = list(a)
        log_p_above = MultivariateNormal(self.m[self.L], self.S[self.L]).log_prob(z[self.L])
        for i in range(self.L - 1, 0, -1):            # TD: keep q-draws above k, prior below
            p = self._p(i, z[i + 1])
            if i <= k:
                z[i] = p.sample()
            else:
                log_p_above = log_p_above + p.log_prob(z[i])
        log_px = self._p(0, z[1]).log_prob(x)
        log_q = sum(q_lp[i - 1] for i in range(k + 1, self.L + 1))
        log_weight = log_px + log_p_above - log_q
        kl = (log_px - log_weight).unsqueeze(1)
        return HierarchyOutput(loss=-log_weight.mean(), log_weight=log_weight, log_px=log_px,
                               kl=kl, group_names=["z"], x_params=x, latents={}, posteriors={},
                               n_samples=n_samples)
