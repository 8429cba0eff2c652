"""What the shipped-config and preset tests share: the variants each config or preset runs,
and the latent kernel the suite uses for conv latents."""

from __future__ import annotations

from biva.config import TOPDOWN_VARIANTS, VARIANTS

# Conv latents whose kernel is the whole feature map (latent_kernel=0, appendix C) make the
# 32x32 and 64x64 presets 60-100M parameters and seconds a row on a CPU; the suite runs them
# with 3x3 latent kernels (channels, strides and latent sizes unchanged), and
# test_conv_preset_at_its_real_latent_kernel (test_presets.py) runs the real kernels once per
# preset.
FAST_LATENT_KERNEL = 3
BIVA_FAMILY = [v for v in VARIANTS if v not in TOPDOWN_VARIANTS]


def family_pairs(names, variant_of) -> list[tuple[str, str]]:
    """(name, variant): the BIVA family's four variants for a BIVA-family config or preset,
    a top-down one's own variant (its spec belongs to it)."""
    out = []
    for name in names:
        own = variant_of(name)
        out += [(name, own)] if own in TOPDOWN_VARIANTS else [(name, v) for v in BIVA_FAMILY]
    return out
