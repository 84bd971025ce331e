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


def test_graph_capture_needs_a_cuda_timer():
    with pytest.raises(ValueError, match="CUDA graphs"):
        with StageTimer("cpu").capture():
            pass


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_stages_captured_in_a_cuda_graph_are_timed_on_every_replay():
    timer = StageTimer("cuda")
    x = torch.randn(4096, 4096, device="cuda")
    out = torch.empty_like(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):      # warm-up outside the capture, as torch.cuda.graph asks
        torch.matmul(x, x, out=out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with timer.capture() as captured, torch.cuda.graph(graph):
        with timer.stage("step", 0):
            with timer.stage("unet", 0):
                torch.matmul(x, x, out=out)
            with timer.stage("adapters", 0):
                out.mul_(0.5)
    assert [name for name, _, _ in captured] == ["unet", "adapters", "step"]
    for step in range(3):
        graph.replay()
        timer.replayed(captured, step=step)
    with timer.stage("outputs"):        # an ordinary stage after the graph
        out.sum()
    report = timer.report()
    assert len(report.steps) == 3 and set(report.once) == {"outputs"}
    for step in report.steps:
        assert set(step) == {"step", "unet", "adapters"}
        # A 4096³ matmul takes well over 10 µs on any GPU; the step brackets its two stages.
        assert 0.01 < step["unet"] <= step["step"] and 0 < step["adapters"] <= step["step"]


@needs_cuda
def test_a_stage_captured_outside_timer_capture_is_refused():
    timer = StageTimer("cuda")
    x = torch.ones(8, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match=r"outside StageTimer.capture\(\)"):
        with torch.cuda.graph(graph):
            with timer.stage("unet", 0):
                x.add_(1)
