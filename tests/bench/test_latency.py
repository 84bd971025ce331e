"""bench/latency.py on the tiny preset (CPU): one real bench run as a subprocess, its JSON against
the schema, the stage counts, the CSV upsert, the plot, the trace and the error paths."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
STEPS, WARMUP, REPEATS = 3, 1, 2


def _load(name: str):
    """bench/ is not a package: its modules are imported from its folder, the way latency.py
    imports its siblings."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, str(BENCH / "latency.py"), "--preset", "tiny", "--device", "cpu",
           "--steps", str(STEPS), "--warmup", str(WARMUP), "--repeats", str(REPEATS),
           "--threads", "1", "--backends", "eager,trt", "--json", str(out / "r.json"), "--csv", str(out / "r.csv"),
           "--plot", str(out / "r.png"), "--profile", str(out / "trace.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, json.loads((out / "r.json").read_text())


def test_json_validates_against_schema(bench_run):
    jsonschema = pytest.importorskip("jsonschema")
    _, _, doc = bench_run
    schema = json.loads((BENCH / "schema" / "latency.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert doc["settings"]["timer"] == "perf_counter"
    assert doc["environment"]["versions"]["torch"] == torch.__version__


def test_every_stage_has_the_documented_n(bench_run):
    measure = _load("latency_measure")
    from ort3d.runtime.timing import STEP_STAGES

    _, _, doc = bench_run
    eager = doc["backends"][0]
    assert (eager["name"], eager["status"]) == ("eager", "ok")
    assert list(eager["stages"]) == [*STEP_STAGES, "step"]
    # n = repeats × the steps that run the stage (the last step renders no feedback).
    for name, stat in eager["stages"].items():
        assert stat["n"] == measure.expected_n(name, STEPS, REPEATS), name
        assert stat["p20_ms"] <= stat["median_ms"] <= stat["p80_ms"]
    assert eager["stages"]["unet"]["n"] == REPEATS * STEPS
    assert eager["stages"]["adapters"]["n"] == REPEATS * (STEPS - 1)
    for name in ("preprocess", "image_encoder", "vae_encoder", "outputs"):
        assert eager["once"][name]["n"] == REPEATS
    assert eager["end_to_end"]["n"] == REPEATS


def test_stage_medians_sum_to_the_step_median(bench_run):
    _, _, doc = bench_run
    stages = doc["backends"][0]["stages"]
    parts = sum(v["median_ms"] for k, v in stages.items() if k != "step")
    # 10%: the stages tile the step (only tensor bookkeeping is outside them); the rest is the
    # difference between a sum of medians and the median of sums on a shared 2-core machine.
    assert parts == pytest.approx(stages["step"]["median_ms"], rel=0.10)


def test_end_to_end_covers_the_steps(bench_run):
    _, _, doc = bench_run
    eager = doc["backends"][0]
    steps_ms = eager["stages"]["step"]["median_ms"] * STEPS
    assert eager["end_to_end"]["median_ms"] > 0.9 * steps_ms
    assert eager["speedup_vs_eager"] == {"step": 1.0, "end_to_end": 1.0}
    assert eager["quality"] is None
    assert eager["peak_memory"]["kind"] == "process_max_rss"
    assert eager["peak_memory"]["bytes"] > 50 * 2**20          # torch + the tiny models at least
    flops = doc["flops"]
    assert flops["unet"]["tflop"] > 0 and flops["vae_decode"]["tflop"] > 0
    assert eager["achieved_tflops"]["unet"]["fraction_of_peak"] is None   # no CPU peak known
    expected = flops["unet"]["tflop"] / (eager["stages"]["unet"]["median_ms"] * 1e-3)
    assert eager["achieved_tflops"]["unet"]["tflops"] == pytest.approx(expected, rel=1e-9)


def test_skipped_backend_reported_with_reason(bench_run):
    _, proc, doc = bench_run
    trt = next(b for b in doc["backends"] if b["name"] == "trt")
    assert trt["status"] == "skipped"
    expected = "tensorrt not installed" if importlib.util.find_spec("tensorrt") is None else "no CUDA"
    assert expected in trt["reason"]
    assert f"skipped: trt: {trt['reason']}" in proc.stdout
    assert "unet (n=6)" in proc.stdout and "end-to-end" in proc.stdout


def test_csv_row_and_plot_and_trace_written(bench_run):
    from PIL import Image

    out, _, doc = bench_run
    lines = (out / "r.csv").read_text().splitlines()
    assert len(lines) == 2   # header + the eager row (skipped backends add no row)
    assert lines[1].startswith(f"tiny,eager,auto,{doc['environment']['device_name']},")
    with Image.open(out / "r.png") as img:
        img.load()
        assert img.format == "PNG" and img.width == 960
        colours = img.convert("RGB").getcolors(maxcolors=100000)
        assert len(colours) > 5   # bars, text and legend, not a blank canvas
    trace = json.loads((out / "trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any(n.startswith("aten::") for n in names)
    assert doc["backends"][0]["profile"] == {"path": str(out / "trace.json"), "step": 1}


def test_csv_upsert_replaces_the_row_with_the_same_key(tmp_path):
    report = _load("latency_report")
    path = tmp_path / "latency.csv"
    row = lambda backend, dtype, ms, **extra: {"preset": "tiny", "backend": backend, "dtype": dtype,  # noqa: E731
                                              "device": "GPU X", "step_median_ms": ms, **extra}
    report.upsert_csv(path, [row("eager", "auto", "10"), row("ort", "auto", "7")])
    report.upsert_csv(path, [row("eager", "fp16", "5")])
    report.upsert_csv(path, [row("eager", "auto", "9", lgm_median_ms="1")])
    lines = path.read_text().splitlines()
    assert lines[0] == "preset,backend,dtype,device,step_median_ms,lgm_median_ms"
    assert lines[1:] == ["tiny,ort,auto,GPU X,7,", "tiny,eager,fp16,GPU X,5,", "tiny,eager,auto,GPU X,9,1"]


def test_device_peaks():
    report = _load("latency_report")
    assert report.device_peak_tflops("NVIDIA H100 80GB HBM3", "auto")[0] == 989.0
    assert report.device_peak_tflops("NVIDIA H100 PCIe", "fp16")[0] == 756.0
    assert report.device_peak_tflops("NVIDIA H200", "fp16")[0] == 989.0
    assert report.device_peak_tflops("NVIDIA A100-SXM4-80GB", "bf16")[0] == 312.0
    peak, note = report.device_peak_tflops("NVIDIA H100 NVL", "fp16")
    assert peak is None and "no peak known" in note
    assert report.device_peak_tflops("NVIDIA H100 80GB HBM3", "fp32")[0] is None
    assert report.device_peak_tflops("CPU Some Chip (2 cores)", "auto")[0] is None


def test_quality_measures():
    measure = _load("latency_measure")
    ref = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert measure.psnr_db(ref, ref) is None
    # A uniform error of 0.01 has MSE 1e-4: PSNR = 40 dB (float64 rounding of ref + 0.01 only).
    assert measure.psnr_db(ref + 0.01, ref) == pytest.approx(40.0, abs=1e-9)
    g = torch.randn(64, 14, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert measure.relative_error(g * 1.5, g) == pytest.approx(0.5, rel=1e-12)
    assert measure.expected_n("render", 25, 3) == 72 and measure.expected_n("step", 25, 3) == 75
    assert measure.expected_n("vae_encoder", 25, 3) == 3


def test_bad_settings_exit_2(capsys):
    latency = _load("latency")
    for argv, words in ((["--backends", "eager,nope"], "unknown backend 'nope'"),
                        (["--steps", "0"], "--steps must be at least 1"),
                        (["--image", "/no/such.png"], "file not found"),
                        (["--checkpoint", "x"], "--checkpoint and --svd go together"),
                        (["--json", "/proc/no/r.json"], "--json: cannot create /proc/no")):
        assert latency.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (argv, err)


def test_failing_backend_is_reported_not_raised(capsys):
    latency, backends = _load("latency"), _load("latency_backends")
    measure = _load("latency_measure")

    def broken(ctx):
        raise RuntimeError("engine file truncated\nsecond line")

    backend = backends.Backend("ort", "torch", lambda ctx: None, broken)
    ctx = backends.BenchContext(models=None, device=torch.device("cpu"), autocast_dtype=None, artefacts=None)
    args = latency.build_parser().parse_args([])
    entry = latency.run_backend(backend, ctx, args, measure, {})
    assert entry == {"name": "ort", "status": "failed", "renderer": "torch",
                     "reason": "RuntimeError: engine file truncated"}
    assert "engine file truncated" in capsys.readouterr().err
