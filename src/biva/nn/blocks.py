"""Gated residual blocks (PixelCNN++ style) and the convolutions that change resolution.

Every deterministic layer of the hierarchy is a :class:`GatedResBlock`: eq. (5) and (8) of the
paper, ``d_{i,j} = <f_{i,j}(d_{i,j-1}); d_{i+1,j}>``, are blocks with an auxiliary input. A
convolution over a concatenation ``<h; a>`` equals the sum of a convolution over ``h`` and one
over ``a``; the block computes it that way so ``a`` may live at another resolution (it is
resampled to the block's input size first).

Speed switches, off by default and set on a whole model with :func:`use_channels_last` and
:func:`use_grad_checkpointing`: channels-last activations (what oneDNN and cuDNN convolutions
run fastest on; parameters keep their layout, so checkpoints do not change) and per-stage
activation recomputation in the backward pass (memory for compute, same gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from biva.nn.weightnorm import WNConv2d, WNConvTranspose2d


def to_channels_last(t: Tensor) -> Tensor:
    """(B, C, H, W) with channels-last strides; a view (no copy) when already laid out so.

    With C = 1 both layouts are the same memory but PyTorch reads NCHW strides as NCHW, and
    the convolutions that follow would run NCHW: the view gets explicit channels-last strides.
    """
    if t.dim() != 4:
        return t
    n, c, h, w = t.shape
    if c == 1 and t.is_contiguous() and not torch.compiler.is_compiling():
        return t.as_strided(t.shape, (h * w, 1, w, 1), t.storage_offset())
    return t.contiguous(memory_format=torch.channels_last)


def resampling_conv(in_ch: int, out_ch: int, in_size: int, out_size: int, kernel: int,
                    init_scale: float = 1.0) -> nn.Module:
    """A weight-normed conv mapping (B, in_ch, in_size, in_size) -> (B, out_ch, out_size, out_size).

    Same size: stride-1 conv; smaller: strided conv; larger: transposed conv. Sizes must divide.
    """
    if in_size == out_size:
        return WNConv2d(in_ch, out_ch, kernel, init_scale=init_scale)
    if in_size > out_size:
        if in_size % out_size:
            raise ValueError(f"cannot downsample {in_size} to {out_size}: not a divisor")
        return WNConv2d(in_ch, out_ch, kernel, stride=in_size // out_size, init_scale=init_scale)
    if out_size % in_size:
        raise ValueError(f"cannot upsample {in_size} to {out_size}: not a multiple")
    return WNConvTranspose2d(in_ch, out_ch, kernel, stride=out_size // in_size,
                             init_scale=init_scale)


class Dropout(nn.Module):
    """Inverted dropout (drop probability ``p``); on CPU with a cheaper exact mask.

    CPU ``bernoulli_`` draws one Mersenne-Twister number per element (it was 10-14% of a
    binary-preset training step). Here each 64-bit draw of ``random_`` gives two 31-bit
    uniforms ``u``, an element is kept when ``u < round((1 - p) 2^31)``, and kept elements are
    scaled by the inverse of that (quantized) keep probability, so the layer stays exactly
    unbiased. CUDA and torch.compile use ``F.dropout`` (their generators are fast).
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self._threshold = round((1.0 - p) * 2**31)
        self._scale = 2**31 / self._threshold

    def forward(self, x: Tensor) -> Tensor:
        """x with each element zeroed with probability p and the rest scaled (training)."""
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return F.dropout(x, self.p, True)
        n = x.numel()
        words = torch.empty((n + 1) // 2, dtype=torch.int64).random_()  # 63 random bits
        u = words.view(torch.int32)[:n] & 0x7FFFFFFF                   # 31 of them each
        keep = (u < self._threshold).as_strided(x.shape, x.stride())    # x's memory order
        return x * (keep.to(x.dtype) * self._scale)

    def extra_repr(self) -> str:
        """The drop probability, for ``print(model)``."""
        return f"p={self.p}"


class GatedResBlock(nn.Module):
    """``y = res(x) + a * sigmoid(b)``, ``(a, b) = conv2(drop(act(conv1(act(x)) + aux(act(c)))))``.

    x: (B, in_ch, in_size, in_size) -> y: (B, out_ch, out_size, out_size). ``conv1`` keeps the
    input resolution, ``conv2`` changes it (stride or transposed stride). The optional auxiliary
    input c: (B, aux_ch, aux_size, aux_size) is the skip connection of eq. (5)/(8). When the
    channel count or size changes, the residual goes through a 1x1 (or 3x3 strided) weight-normed
    conv rather than being zero-padded or dropped, so information is never discarded.
    """

    channels_last = False  # convert inputs to channels-last (see use_channels_last)

    def __init__(self, in_ch: int, out_ch: int, in_size: int, out_size: int, kernel: int = 3,
                 aux_ch: int = 0, aux_size: int | None = None, dropout: float = 0.0,
                 out_scale: float = 0.1):
        super().__init__()
        self.act = nn.ELU()
        self.conv1 = WNConv2d(in_ch, out_ch, kernel)
        self.aux = None
        if aux_ch:
            aux_size = in_size if aux_size is None else aux_size
            self.aux = resampling_conv(aux_ch, out_ch, aux_size, in_size,
                                       1 if aux_size == in_size else 3)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        # A small init scale on the gated output starts every block close to the identity,
        # which keeps the activations of a deep stack at unit scale after the data init.
        self.conv2 = resampling_conv(out_ch, 2 * out_ch, in_size, out_size, kernel,
                                     init_scale=out_scale)
        self.skip = None
        if in_ch != out_ch or in_size != out_size:
            self.skip = resampling_conv(in_ch, out_ch, in_size, out_size,
                                        1 if in_size == out_size else 3)

    def forward(self, x: Tensor, aux: Tensor | None = None) -> Tensor:
        """x (B, in_ch, in_size, in_size), optional aux (B, aux_ch, aux_size, aux_size) ->
        (B, out_ch, out_size, out_size): residual + a * sigmoid(b)."""
        if self.channels_last:
            # A no-op for tensors already channels-last; dense-latent embeddings and the model
            # input arrive as NCHW and are converted once here.
            x = to_channels_last(x)
        h = self.conv1(self.act(x))
        if (self.aux is None) != (aux is None):
            # Never drop a skip connection silently (nor run without one it was built for).
            raise ValueError("this block was built with no auxiliary input; one was given"
                             if self.aux is None else
                             "this block was built with an auxiliary input; none was given")
        if self.aux is not None:
            if self.channels_last:
                aux = to_channels_last(aux)
            h = h + self.aux(self.act(aux))
        h = self.conv2(self.dropout(self.act(h)))
        a, b = h.chunk(2, dim=1)
        res = x if self.skip is None else self.skip(x)
        return torch.addcmul(res, a, torch.sigmoid(b))  # res + a * sigmoid(b), one pass


class Stage(nn.Module):
    """M gated blocks; block 1 changes resolution/channels, block j takes skip input j.

    ``forward(h, skips)`` returns the list [d_1, ..., d_M] of block outputs (eq. 5/8); ``skips``
    is the list of the neighbouring stage's block outputs, or None for a stage without skips.
    With ``grad_checkpointing`` set, only the stage's inputs and outputs are kept for the
    backward pass; the blocks' inner activations are recomputed (same dropout masks).
    """

    grad_checkpointing = False

    def __init__(self, in_ch: int, out_ch: int, in_size: int, out_size: int, n_blocks: int,
                 kernel: int, dropout: float, skip_ch: int = 0, skip_size: int | None = None):
        super().__init__()
        blocks = []
        for j in range(n_blocks):
            blocks.append(GatedResBlock(
                in_ch if j == 0 else out_ch, out_ch, in_size if j == 0 else out_size, out_size,
                kernel=kernel, aux_ch=skip_ch, aux_size=skip_size, dropout=dropout))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, h: Tensor, skips: list[Tensor] | None = None) -> list[Tensor]:
        """The M block outputs [d_1, ..., d_M], each (B, out_ch, out_size, out_size)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            # Non-reentrant: works with list inputs/outputs and under autocast; the RNG state
            # is restored for the recomputation, so dropout draws the same masks.
            return checkpoint(self._run, h, skips, use_reentrant=False)
        return self._run(h, skips)

    def _run(self, h: Tensor, skips: list[Tensor] | None) -> list[Tensor]:
        outs = []
        for j, block in enumerate(self.blocks):
            h = block(h, None if skips is None else skips[j])
            outs.append(h)
        return outs


def use_channels_last(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Run every gated block of ``model`` on channels-last activations (or back); returns it.

    Outputs are unchanged up to float rounding; parameters and state dicts are not touched.
    """
    for m in model.modules():
        if isinstance(m, GatedResBlock):
            m.channels_last = enabled
    return model


def use_grad_checkpointing(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Recompute each stage's activations in the backward pass (less memory); returns model."""
    for m in model.modules():
        if isinstance(m, Stage):
            m.grad_checkpointing = enabled
    return model


class _ToNCHW(torch.autograd.Function):
    """``x.contiguous()`` whose gradient goes back channels-last, the layout of ``x``.

    Plain ``contiguous`` hands back an NCHW gradient, and one NCHW gradient mixed into the
    channels-last gradients of the stages sends every element-wise backward op that meets it
    down a slow strided path.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def elu_flatten(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C*H*W) after the block activation (input to a dense latent head)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        x = _ToNCHW.apply(x)  # flatten in C, H, W order, as the dense weights expect
    return F.elu(x).flatten(1)
