"""SVD's sampler: EDM-style Euler with Karras sigmas and v-prediction (docs/inference.md#scheduler).

The whole schedule is precomputed as float32 tables so a runtime can index them by a step index
that lives on the device (no host sync per step). The numbers are those of diffusers'
`EulerDiscreteScheduler` configured like SVD's `scheduler_config.json`: same float64 Karras ramp,
same float32 rounding, same op order in `step`, so the results are bit-identical to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

KARRAS_RHO = 7.0   # hard-coded in diffusers' `_convert_to_karras` (EDM paper value)

# scheduler_config.json fields whose value changes the maths; anything else must keep this value.
_REQUIRED = {
    "prediction_type": "v_prediction",
    "use_karras_sigmas": True,
    "timestep_type": "continuous",
}
_ALLOWED_DEFAULTS = {"final_sigmas_type": "zero", "use_exponential_sigmas": False,
                     "use_beta_sigmas": False}


# Karras sigmas interpolate between the first and the last step: one step has no interval.
MIN_STEPS = 2


class ScheduleConfigError(ValueError):
    """A scheduler config this sampler does not implement (message names the field)."""


@dataclass(frozen=True)
class ScheduleConfig:
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    timestep_spacing: str = "leading"   # only changes init_noise_sigma (Karras sigmas ignore it)

    @classmethod
    def from_scheduler_config(cls, config: dict[str, Any]) -> "ScheduleConfig":
        """Read diffusers' scheduler_config.json (as a dict); reject what we do not implement."""
        name = config.get("_class_name", "EulerDiscreteScheduler")
        if name != "EulerDiscreteScheduler":
            raise ScheduleConfigError(f"_class_name is {name!r}; only EulerDiscreteScheduler is supported")
        for key, want in _REQUIRED.items():
            if config.get(key) != want:
                raise ScheduleConfigError(f"{key} is {config.get(key)!r}; only {want!r} is supported")
        for key, want in _ALLOWED_DEFAULTS.items():
            if config.get(key, want) != want:
                raise ScheduleConfigError(f"{key} is {config[key]!r}; only {want!r} is supported")
        for key in ("sigma_min", "sigma_max"):
            if not isinstance(config.get(key), (int, float)) or config[key] <= 0:
                raise ScheduleConfigError(f"{key} is {config.get(key)!r}; a positive number is needed")
        spacing = config.get("timestep_spacing", "linspace")
        if spacing not in ("linspace", "leading", "trailing"):
            raise ScheduleConfigError(f"timestep_spacing is {spacing!r}; expected linspace/leading/trailing")
        return cls(float(config["sigma_min"]), float(config["sigma_max"]), spacing)


def karras_sigmas(num_steps: int, config: ScheduleConfig) -> torch.Tensor:
    """num_steps + 1 float32 sigmas, the last one 0. float64 numpy like diffusers, then rounded."""
    ramp = np.linspace(0, 1, num_steps)
    min_inv_rho = config.sigma_min ** (1 / KARRAS_RHO)
    max_inv_rho = config.sigma_max ** (1 / KARRAS_RHO)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** KARRAS_RHO
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


@dataclass(frozen=True)
class EDMEulerSchedule:
    """Per-step float32 tables, index i = 0..n-1 (sigmas has n+1 entries, the last 0).

    x0 = c_out·v + c_skip·x;  UNet input = c_in·x;  t = 0.25·ln σ is what the networks see.
    `scale_input` and `step` divide exactly like diffusers; the c_* tables are for fused paths
    (multiplying by c_in / c_skip differs from dividing by at most 1 ulp).
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    c_in: torch.Tensor
    c_skip: torch.Tensor
    c_out: torch.Tensor
    sigma_next: torch.Tensor
    init_noise_sigma: torch.Tensor   # 0-dim

    @classmethod
    def create(cls, num_steps: int, config: ScheduleConfig = ScheduleConfig(),
               device: torch.device | str | None = None) -> "EDMEulerSchedule":
        if num_steps < MIN_STEPS:
            raise ValueError(f"num_steps must be at least {MIN_STEPS}, got {num_steps}")
        sigmas = karras_sigmas(num_steps, config)
        sigma = sigmas[:-1]
        max_sigma = sigmas.max()
        # diffusers: "leading" spacing scales the initial noise by sqrt(σ_max² + 1), others by σ_max.
        init = max_sigma if config.timestep_spacing in ("linspace", "trailing") else (max_sigma**2 + 1) ** 0.5
        tables = dict(
            sigmas=sigmas,
            timesteps=0.25 * sigma.log(),
            c_in=1 / (sigma**2 + 1) ** 0.5,
            c_skip=1 / (sigma**2 + 1),
            c_out=-sigma / (sigma**2 + 1) ** 0.5,   # same expression diffusers evaluates in step()
            sigma_next=sigmas[1:].clone(),
            init_noise_sigma=init,
        )
        return cls(**{k: v.to(device) for k, v in tables.items()})

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[0]

    def scale_input(self, x: torch.Tensor, i) -> torch.Tensor:
        """diffusers' `scale_model_input`: x / sqrt(σ_i² + 1)."""
        sigma = self.sigmas[i]
        return x / ((sigma**2 + 1) ** 0.5)

    def step(self, v: torch.Tensor, x: torch.Tensor, i) -> tuple[torch.Tensor, torch.Tensor]:
        """One Euler step from v-prediction `v` at latents `x`; returns (x_next, x0).

        `i` is an int or a 0-dim integer tensor on the tables' device. x is upcast to float32 and
        x_next cast back to v's dtype, as diffusers does (s_churn = 0: no noise injected).
        """
        x = x.to(torch.float32)
        sigma = self.sigmas[i]
        x0 = v * self.c_out[i] + (x / (sigma**2 + 1))
        derivative = (x - x0) / sigma
        x_next = x + derivative * (self.sigma_next[i] - sigma)
        return x_next.to(v.dtype), x0
