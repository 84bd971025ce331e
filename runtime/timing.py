"""Per-stage timing and non-finite detection for the recursive loop, without host syncs in a step.

On CUDA a stage is bracketed by CUDA events (read once, after the run) and an NVTX range; on CPU
by `perf_counter` (the CPU executes synchronously, so no sync is needed). The finite check writes
one device flag per (step, stage) and is read once at the end, unless `eager` asks for a sync per
stage to stop at the first bad value.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

STEP_STAGES = ("unet", "guidance+scheduler", "vae_decode", "lgm", "render", "feedback", "adapters")
PRE_LOOP_STAGES = ("preprocess", "image_encoder", "vae_encoder")
POST_LOOP_STAGES = ("final_decode", "orbit_render", "outputs")
ONCE_STAGES = PRE_LOOP_STAGES + POST_LOOP_STAGES


class RunError(RuntimeError):
    """A run failed in a way the user should read as one line (not a bug in ort3d)."""


class NonFiniteError(RunError):
    """A NaN or Inf appeared; the message names the stage and the step."""


class StageTimer:
    def __init__(self, device: torch.device, enabled: bool = True):
        self.cuda = torch.device(device).type == "cuda"
        self.enabled = enabled
        self._records: list[tuple[str, int | None, object, object]] = []

    @contextlib.contextmanager
    def stage(self, name: str, step: int | None = None):
        if not self.enabled:
            yield
            return
        label = name if step is None else f"{name}[{step}]"
        # record_function marks the stage in torch.profiler traces (bench --profile); NVTX in Nsight.
        with torch.profiler.record_function(label):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.nvtx.range_push(label)
                start.record()
                try:
                    yield
                finally:
                    end.record()
                    torch.cuda.nvtx.range_pop()
            else:
                start = time.perf_counter()
                try:
                    yield
                finally:
                    end = time.perf_counter()
        self._records.append((name, step, start, end))

    def _elapsed_ms(self, start, end) -> float:
        if self.cuda:
            return start.elapsed_time(end)
        return (end - start) * 1e3

    def report(self) -> "TimingReport":
        """Reads all records (one device sync on CUDA)."""
        if self.cuda and self._records:
            torch.cuda.synchronize()
        per_step: dict[int, dict[str, float]] = defaultdict(dict)
        once: dict[str, float] = {}
        for name, step, start, end in self._records:
            ms = self._elapsed_ms(start, end)
            if step is None:
                once[name] = once.get(name, 0.0) + ms
            else:
                per_step[step][name] = per_step[step].get(name, 0.0) + ms
        return TimingReport(once=once, steps=[per_step[s] for s in sorted(per_step)])


@dataclass
class TimingReport:
    once: dict[str, float]            # stage -> ms, once-per-image work
    steps: list[dict[str, float]]     # per step: stage -> ms (plus "step": the whole step)

    def stage_summary(self) -> dict[str, dict[str, float]]:
        """median / p20 / p80 / n per step stage over the steps."""
        names = sorted({n for step in self.steps for n in step})
        return {name: summarize_ms([step[name] for step in self.steps if name in step])
                for name in names}

    def as_dict(self) -> dict:
        return {"once_ms": self.once, "steps_ms": self.steps, "per_stage": self.stage_summary(),
                "total_ms": sum(self.once.values()) + sum(s.get("step", 0.0) for s in self.steps)}


def summarize_ms(values: list[float]) -> dict[str, float]:
    """median / p20 / p80 / n of millisecond samples (also bench/latency.py's statistics)."""
    values = sorted(values)
    return {"median_ms": statistics.median(values), "p20_ms": _quantile(values, 0.2),
            "p80_ms": _quantile(values, 0.8), "n": len(values)}


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class FiniteGuard:
    """One device-side flag per (row, stage), rows in execution order: pre-loop work, each step,
    post-loop work. `check` never syncs unless `eager`; `raise_if_any` reports the first bad one."""

    def __init__(self, num_steps: int, device, eager: bool = False):
        self.eager = eager
        self.num_steps = num_steps
        self.stages = STEP_STAGES + ONCE_STAGES
        self.flags = torch.zeros(num_steps + 2, len(self.stages), dtype=torch.bool, device=device)

    def _row(self, stage: str, step: int | None) -> int:
        if step is not None:
            return 1 + step
        return 0 if stage in PRE_LOOP_STAGES else self.num_steps + 1

    def check(self, stage: str, step: int | None, *tensors: torch.Tensor) -> None:
        row, col = self._row(stage, step), self.stages.index(stage)
        for t in tensors:
            self.flags[row, col] |= ~torch.isfinite(t).all()
        if self.eager:
            self.raise_if_any()

    def raise_if_any(self) -> None:
        bad = self.flags.nonzero()   # the one host sync
        if len(bad):
            row, col = (int(v) for v in bad[0])
            where = f" at step {row - 1}" if 1 <= row <= self.num_steps else ""
            raise NonFiniteError(f"non-finite values (NaN/Inf) in stage '{self.stages[col]}'{where}")
