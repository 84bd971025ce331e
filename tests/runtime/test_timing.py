import pytest
import torch

from ort3d.runtime.timing import FiniteGuard, NonFiniteError, StageTimer


def test_finite_guard_names_the_first_bad_stage_and_step():
    guard = FiniteGuard(num_steps=3, device="cpu")
    guard.check("unet", 0, torch.ones(4))
    guard.check("lgm", 1, torch.tensor([1.0, float("nan")]))
    guard.check("unet", 2, torch.tensor([float("inf")]))      # later: not the one reported
    with pytest.raises(NonFiniteError, match=r"stage 'lgm' at step 1"):
        guard.raise_if_any()


def test_finite_guard_orders_pre_loop_work_first_and_eager_mode_stops_at_once():
    guard = FiniteGuard(num_steps=2, device="cpu")
    guard.check("unet", 0, torch.tensor([float("nan")]))
    guard.check("image_encoder", None, torch.tensor([float("nan")]))
    with pytest.raises(NonFiniteError, match=r"stage 'image_encoder'$"):
        guard.raise_if_any()
    eager = FiniteGuard(num_steps=2, device="cpu", eager=True)
    eager.check("vae_decode", 0, torch.zeros(2))
    with pytest.raises(NonFiniteError, match="vae_decode"):
        eager.check("vae_decode", 1, torch.tensor([float("-inf")]))


def test_clean_run_passes():
    guard = FiniteGuard(num_steps=2, device="cpu")
    for step in range(2):
        guard.check("unet", step, torch.randn(3))
    guard.raise_if_any()


def test_stage_timer_summarises_per_stage_medians():
    timer = StageTimer("cpu")
    for step in range(5):
        with timer.stage("step", step):
            with timer.stage("unet", step):
                sum(range(1000))
    with timer.stage("image_encoder"):
        pass
    report = timer.report()
    summary = report.stage_summary()
    assert set(summary) == {"step", "unet"}
    assert summary["unet"]["n"] == 5 and summary["step"]["n"] == 5
    assert summary["unet"]["p20_ms"] <= summary["unet"]["median_ms"] <= summary["unet"]["p80_ms"]
    assert summary["unet"]["median_ms"] <= summary["step"]["median_ms"]
    assert "image_encoder" in report.once and len(report.steps) == 5
