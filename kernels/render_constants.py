"""The constants of the reference renderer and feedback maps, defined once for every renderer.

diff-gaussian-rasterization's forward pass (docs/renderers.md, quirk Q19 in docs/quirks.md#q19)
and the authors' CCM (docs/quirks.md#q5). The torch reference (`render.py`, `feedback.py`) reads
them as Python floats; the Triton kernels receive them as `tl.constexpr` arguments, so a kernel
and its torch twin can never disagree on one.
"""

from __future__ import annotations

# Rasterisation
TILE = 16                    # the rasterizer's BLOCK_X = BLOCK_Y (pixels per tile side)
NEAR_Z = 0.2                 # in_frustum culls view z <= 0.2
JACOBIAN_CLAMP = 1.3         # EWA Jacobian uses x/z, y/z clamped to ±1.3·tanfov
DILATION = 0.3               # px² added to the 2D covariance diagonal (anti-aliasing low-pass)
DISCRIMINANT_FLOOR = 0.1     # λ_max = mid + sqrt(max(mid² − det, 0.1))
SIGMA_EXTENT = 3.0           # screen radius = ceil(3·sqrt(λ_max)): 3σ
ALPHA_MAX = 0.99             # α = min(0.99, o·exp(power))
ALPHA_MIN = 1.0 / 255.0      # α below this is skipped
T_MIN = 1e-4                 # stop before a Gaussian that would push transmittance below this

# Feedback maps (the adapters' inputs)
CCM_SCALE = 0.001            # CCM = clamp(world·0.001 + 0.5, 0, 1)
CCM_OFFSET = 0.5
UNSHUFFLE = 8                # adapter PixelUnshuffle factor: maps at latent resolution
FEEDBACK_CHANNELS = 3 * UNSHUFFLE * UNSHUFFLE   # 3 channels -> 192
