"""Per-stage timing and non-finite detection for the recursive loop, without host syncs in a step.

On CUDA a stage is bracketed by CUDA events (read once, after the run) and an NVTX range; on CPU
by `perf_counter` (the CPU executes synchronously, so no sync is needed). Stages inside a CUDA-graph
capture become event-record nodes of the graph and are read after each replay (`StageTimer.capture`).
The finite check writes one device flag per (step, stage) and is read once at the end, unless
`eager` asks for a sync per stage to stop at the first bad value.
"""

from __future__ import annotations

import contextlib
import inspect
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
    """Per-stage times of a run. Records are read in `report()` (one device sync on CUDA).

    CUDA graphs: an ordinary event recorded while a graph is being captured only orders streams
    and never holds a time. Stages recorded inside `capture()` use events made with
    external=True instead, which the capture turns into event-record nodes of the graph; each
    replay records them again, and `replayed(captured, step)` files that replay's times:

        with timer.capture() as captured, torch.cuda.graph(graph):
            with timer.stage("unet", 0): ...
        for i in range(steps):
            graph.replay()
            timer.replayed(captured, step=i)
    """

    def __init__(self, device: torch.device, enabled: bool = True):
        self.cuda = torch.device(device).type == "cuda"
        self.enabled = enabled
        # (stage, step, ms) when known at once (CPU, a read replay) or (stage, step, (start, end)
        # CUDA events) read in report().
        self._records: list[tuple[str, int | None, object]] = []
        self._captured: list[tuple[str, int | None, tuple]] | None = None   # inside capture()

    @contextlib.contextmanager
    def stage(self, name: str, step: int | None = None):
        if not self.enabled:
            yield
            return
        label = name if step is None else f"{name}[{step}]"
        capturing = self.cuda and torch.cuda.is_current_stream_capturing()
        if capturing and self._captured is None:
            raise RuntimeError(f"stage '{label}' is being captured into a CUDA graph outside "
                               "StageTimer.capture(): its events would hold no time")
        # record_function marks the stage in torch.profiler traces (bench --profile); NVTX in Nsight.
        with torch.profiler.record_function(label):
            if self.cuda:
                start, end = (torch.cuda.Event(enable_timing=True, external=capturing) for _ in range(2))
                torch.cuda.nvtx.range_push(label)
                start.record()
                try:
                    yield
                finally:
                    end.record()
                    torch.cuda.nvtx.range_pop()
                timing = (start, end)
            else:
                begin = time.perf_counter()
                try:
                    yield
                finally:
                    timing = (time.perf_counter() - begin) * 1e3
        (self._captured if capturing else self._records).append((name, step, timing))

    @contextlib.contextmanager
    def capture(self):
        """Wrap a CUDA-graph capture; yields the list of stages recorded into the graph."""
        if not self.cuda:
            raise ValueError("StageTimer.capture() times CUDA graphs; this timer runs on the CPU")
        if "external" not in inspect.signature(torch.cuda.Event.__new__).parameters:
            raise RuntimeError(f"torch {torch.__version__} has no torch.cuda.Event(external=...), "
                               "which timing stages inside a CUDA graph needs")
        if self._captured is not None:
            raise RuntimeError("StageTimer.capture() is already active")
        self._captured = []
        try:
            yield self._captured
        finally:
            self._captured = None

    def replayed(self, captured: list, step: int | None = None) -> None:
        """File the stage times of the replay that just ran of the graph `captured` came from.

        Waits for that replay to finish (a host sync per call: the next replay records the same
        events again). `step` files step stages under that step instead of the captured one.
        """
        for name, captured_step, (start, end) in captured:
            end.synchronize()
            filed_step = captured_step if step is None or captured_step is None else step
            self._records.append((name, filed_step, start.elapsed_time(end)))

    def report(self) -> "TimingReport":
        """Reads all records (one device sync on CUDA)."""
        if self.cuda and self._records:
            torch.cuda.synchronize()
        per_step: dict[int, dict[str, float]] = defaultdict(dict)
        once: dict[str, float] = {}
        for name, step, timing in self._records:
            ms = timing if isinstance(timing, float) else timing[0].elapsed_time(timing[1])
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
