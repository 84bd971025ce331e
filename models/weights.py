"""Deterministic random weights: a pure function of (seed, state-dict key, shape).

Every tensor gets its own generator seeded from the seed and the key's CRC32, so the same
weights come out whatever the construction order, module class or device — which is what lets
a scratch environment running the authors' classes build bit-identical tiny weights for parity
fixtures. Nothing is zero: layers the authors zero-initialise (adapter block2, LGM time
embedding) must be random, or the paths they gate are never exercised.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn


def deterministic_tensor(seed: int, network: str, key: str, shape,
                         dtype=torch.float32) -> torch.Tensor:
    """`network` ("mv", "lgm", "vae", "clip") keeps equal keys of different nets independent."""
    name = f"{network}/{key}".encode()
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name)) % (2**63))
    shape = tuple(shape)
    values = torch.randn(shape, generator=gen, dtype=torch.float32)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        values = values / math.sqrt(fan_in)
    elif key.endswith("weight") and "norm" in key:
        values = 1.0 + 0.1 * values   # normalisation gains stay near 1
    else:
        values = 0.1 * values         # biases, mix factors
    return values.to(dtype)


def deterministic_state_dict(module: nn.Module, seed: int, network: str) -> dict[str, torch.Tensor]:
    """Random weights for every floating-point tensor of `module` (same keys and shapes);
    integer buffers (e.g. position ids) keep their values."""
    return {k: deterministic_tensor(seed, network, k, v.shape) if v.is_floating_point() else v
            for k, v in module.state_dict().items()}


def init_deterministic(module: nn.Module, seed: int, network: str) -> nn.Module:
    """Fill `module` in place (works for modules built on the meta device via `assign`)."""
    state = deterministic_state_dict(module, seed, network)
    module.load_state_dict(state, strict=True, assign=any(p.is_meta for p in module.parameters()))
    return module


# A random LGM head emits scale logits around 0, i.e. 0.1·softplus(0) ≈ 0.07: splats ten times
# larger than a trained LGM's (≈0.005–0.03), which blurs every view and makes each render cover
# most tiles. The built-in random model shifts the head's scale bias so that 0.1·softplus(x − 3)
# ≈ 0.005 at x = 0. Parity fixtures use plain `deterministic_tensor` and are unaffected.
LGM_SCALE_LOGIT_SHIFT = -3.0
LGM_SCALE_CHANNELS = slice(4, 7)


def random_model_state_dict(module: nn.Module, seed: int, network: str) -> dict[str, torch.Tensor]:
    """`deterministic_state_dict`, plus the LGM scale calibration for the built-in random model."""
    state = deterministic_state_dict(module, seed, network)
    if network == "lgm":
        state["conv.bias"][LGM_SCALE_CHANNELS] += LGM_SCALE_LOGIT_SHIFT
    return state
