"""The feedback-renderer object: per-kind stage timing, the Triton overlap capacity sized from the
first render and grown between steps (a render that overflowed is redone and equals the
reference), the post-run check and the report, and the kind registry."""

import contextlib
import math

import pytest
import torch

from kernel_helpers import INTRINSICS, kernel_device, rel_err
from ort3d.kernels.feedback_dispatch import (RENDERERS, FeedbackRenderError, RendererUnavailable,
                                             UnknownRendererError, create_feedback_renderer,
                                             prepare_render_cameras, render_feedback)
from ort3d.kernels.synthetic_gaussians import lgm_like_gaussians, look_at_c2w

H, W = 32, 32
NUM = 128         # 2 views × 128 Gaussians need 271 tile overlaps (more than 1 per Gaussian and view)


def cameras(device):
    return prepare_render_cameras(look_at_c2w([45.0, 270.0]), 39.6, INTRINSICS.expand(2, 3, 3),
                                  H, W, device=device)


class StageLog:
    """Records the stages a renderer opens, like runtime.timing.StageTimer would time them."""

    def __init__(self):
        self.stages = []

    @contextlib.contextmanager
    def stage(self, name, step=None):
        self.stages.append((name, step))
        yield


def assert_equals_reference(rgb, ccm, gaussians, cams):
    ref = render_feedback(gaussians, cams, "torch")
    assert rel_err(rgb, ref.rgb) <= 1e-5        # float rounding of the same maths
    # CCM is fp16-valued (Q5): a depth rounding difference may flip one fp16 ulp.
    assert (ccm - ref.ccm).abs().max() <= 2.0 ** -11


def test_each_kind_times_its_own_stages():
    device = kernel_device()
    gaussians = lgm_like_gaussians(num=NUM, seed=5, device=device)
    cams = cameras(device)
    for kind, stages in (("torch", [("render", 3), ("feedback", 3)]), ("triton", [("render", 3)])):
        log = StageLog()
        rgb, ccm = create_feedback_renderer(kind, cams)(gaussians, log, 3)
        assert log.stages == stages, kind        # triton fuses the CCM into its render kernel
        assert rgb.shape == ccm.shape == (2, 192, H // 8, W // 8)
        assert_equals_reference(rgb, ccm, gaussians, cams)


def headroom(needed: int) -> int:
    """1.5× the need, rounded up to a whole number of 16-entry blocks (Triton specialises an int
    argument on divisibility by 16: one compiled binning variant whatever the capacity)."""
    return max(16, math.ceil(math.ceil(1.5 * needed) / 16) * 16)


def test_with_headroom_is_one_and_a_half_times_in_blocks_of_16():
    from ort3d.kernels.triton_render import with_headroom

    assert [with_headroom(n) for n in (0, 1, 10, 11, 32, 1000)] == [16, 16, 16, 32, 48, 1504]
    assert all(with_headroom(n) == headroom(n) for n in range(0, 5000, 7))


def test_auto_capacity_is_sized_from_the_first_render():
    device = kernel_device()
    gaussians = lgm_like_gaussians(num=NUM, seed=5, device=device)
    renderer = create_feedback_renderer("triton", cameras(device))
    renderer(gaussians, None, 0)
    assert renderer.budget.capacity == 2 * NUM * 16          # the provisional first capacity
    needed = int(renderer.budget.peak)
    assert not renderer.after_step(0)                        # it fitted: nothing to redo
    assert renderer.budget.capacity == headroom(needed)  # 1.5× the need, rounded up
    assert renderer.report() == {"kind": "triton", "overlap_capacity": {
        "mode": "auto", "tiles_per_gaussian": None, "first_render_needed": needed,
        "initial": headroom(needed), "growths": [], "rerendered_steps": []}}

    # No render since the last check (the loop's last step renders nothing): no device read.
    def no_read():
        raise AssertionError("after_step read the device without a new render")
    renderer.budget.peak_needed = no_read
    assert not renderer.after_step(1)


def test_an_overflowing_render_is_grown_redone_and_equals_the_reference():
    device = kernel_device()
    gaussians = lgm_like_gaussians(num=NUM, seed=5, device=device)
    cams = cameras(device)
    renderer = create_feedback_renderer("triton", cams, overlap_tiles=1)   # forced too small
    short_rgb, short_ccm = renderer(gaussians, None, 0)
    needed = int(renderer.budget.peak)
    assert needed > renderer.budget.capacity == 2 * NUM
    ref = render_feedback(gaussians, cams, "torch")
    assert rel_err(short_rgb, ref.rgb) > 1e-3          # the overflow really dropped Gaussians

    assert renderer.after_step(0)                       # grown: render step 0 again
    rgb, ccm = renderer(gaussians, None, 0)
    assert_equals_reference(rgb, ccm, gaussians, cams)
    renderer.check()                                    # nothing left incomplete
    assert not renderer.after_step(0)                   # the redo fitted
    assert renderer.report()["overlap_capacity"] == {
        "mode": "fixed", "tiles_per_gaussian": 1, "first_render_needed": needed, "initial": 2 * NUM,
        "growths": [{"step": 0, "needed": needed, "capacity": headroom(needed)}],
        "rerendered_steps": [0]}


def test_a_later_step_that_overflows_grows_the_capacity_then_a_new_run_starts_afresh():
    device = kernel_device()
    gaussians = lgm_like_gaussians(num=NUM, seed=5, device=device)
    faint = gaussians.clone()
    faint[:, 16:, 3] = 0.0           # step 0: most Gaussians invisible (culled), a small need
    cams = cameras(device)
    renderer = create_feedback_renderer("triton", cams)
    renderer(faint, None, 0)
    assert not renderer.after_step(0)
    first_need = renderer.report()["overlap_capacity"]["first_render_needed"]
    initial = renderer.budget.capacity
    renderer(gaussians, None, 1)     # step 1 needs far more than 1.5× step 0's need
    needed = int(renderer.budget.peak)
    assert needed > initial
    assert renderer.after_step(1)
    rgb, ccm = renderer(gaussians, None, 1)
    assert_equals_reference(rgb, ccm, gaussians, cams)
    report = renderer.report()["overlap_capacity"]
    assert report["initial"] == initial == headroom(first_need)
    assert report["growths"] == [{"step": 1, "needed": needed, "capacity": headroom(needed)}]
    assert report["rerendered_steps"] == [1]

    renderer.start_run()             # the next image: records and sizing start over
    assert renderer.report()["overlap_capacity"]["growths"] == []
    renderer(faint, None, 0)
    assert renderer.budget.capacity == 2 * NUM * 16


def test_an_overflow_nobody_redid_fails_the_post_run_check():
    device = kernel_device()
    gaussians = lgm_like_gaussians(num=NUM, seed=5, device=device)
    renderer = create_feedback_renderer("triton", cameras(device), overlap_tiles=1)
    renderer(gaussians, None, 0)     # a driver that never calls after_step
    with pytest.raises(FeedbackRenderError, match=r"needed \d+ tile overlaps but its buffer holds 256"):
        renderer.check()


def test_registry_names_unknown_and_unavailable_kinds(monkeypatch):
    cams = cameras("cpu")
    with pytest.raises(UnknownRendererError, match="renderer must be one of torch, triton"):
        create_feedback_renderer("cuda", cams)
    monkeypatch.setenv("TRITON_INTERPRET", "0")     # read by the check, not by Triton here
    with pytest.raises(RendererUnavailable, match="renderer triton: needs a CUDA device"):
        create_feedback_renderer("triton", cams)
    assert RENDERERS["torch"].unavailable(torch.device("cpu")) is None
    assert create_feedback_renderer("torch", cams).report() == {"kind": "torch"}
