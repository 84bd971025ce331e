"""bench/latency.py on the tiny preset (CPU): one real bench run as a subprocess, its JSON against
the schema, the stage counts, the CSV upsert, the plot, the trace, the rows taken from
runtime.networks.BACKENDS and the error paths. bench/ is on pytest's pythonpath (pyproject), so
`latency` and `latency_report` import as they do for each other when run as scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import latency
import latency_report
import pytest
import torch

from ort3d.models.presets import get_preset
from ort3d.runtime import networks
from ort3d.runtime.cli_common import versions

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
STEPS, WARMUP, REPEATS = 3, 1, 2


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
    assert doc["environment"]["versions"] == versions()   # cli_common's block, same interpreter
    assert doc["environment"]["versions"]["torch"] == torch.__version__
    assert doc["flops"]["reference_tflop"] is None         # the reference figures are for full only


def test_every_stage_has_the_documented_n(bench_run):
    from ort3d.runtime.timing import STEP_STAGES

    _, _, doc = bench_run
    eager = doc["backends"][0]
    assert (eager["name"], eager["status"]) == ("eager", "ok")
    assert list(eager["stages"]) == [*STEP_STAGES, "step"]
    # n = repeats × the steps that run the stage (the last step renders no feedback).
    for name, stat in eager["stages"].items():
        assert stat["n"] == latency.expected_n(name, STEPS, REPEATS), name
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
    # The factory's own reason (no tensorrt, or no CUDA device here), not a bench copy of it.
    assert trt["reason"] == networks.unavailable_reason("trt", get_preset("tiny"), "cpu")
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


def test_table_without_the_eager_reference(bench_run):
    _, _, doc = bench_run
    # The eager row failed but another ran: finish_entries leaves it without speed-up or quality.
    other = {**doc["backends"][0], "name": "ort", "speedup_vs_eager": None, "quality": None}
    failed = {"name": "eager", "status": "failed", "reason": "RuntimeError: boom", "renderer": "torch"}
    lines = latency_report.format_table({**doc, "backends": [failed, other]}).splitlines()
    speedup = next(line for line in lines if line.startswith("step speed-up vs eager"))
    quality = next(line for line in lines if line.startswith("quality"))
    assert speedup.split()[-1] == "-" and quality.split()[-1] == "-"
    assert "failed: eager: RuntimeError: boom" in lines


def test_csv_upsert_replaces_the_row_with_the_same_key(tmp_path):
    path = tmp_path / "latency.csv"
    row = lambda backend, dtype, ms, **extra: {"preset": "tiny", "backend": backend, "dtype": dtype,  # noqa: E731
                                              "device": "GPU X", "step_median_ms": ms, **extra}
    latency_report.upsert_csv(path, [row("eager", "auto", "10"), row("ort", "auto", "7")])
    latency_report.upsert_csv(path, [row("eager", "fp16", "5")])
    latency_report.upsert_csv(path, [row("eager", "auto", "9", lgm_median_ms="1")])
    lines = path.read_text().splitlines()
    assert lines[0] == "preset,backend,dtype,device,step_median_ms,lgm_median_ms"
    assert lines[1:] == ["tiny,ort,auto,GPU X,7,", "tiny,eager,fp16,GPU X,5,", "tiny,eager,auto,GPU X,9,1"]


def test_device_peaks():
    assert latency_report.device_peak_tflops("NVIDIA H100 80GB HBM3", "auto")[0] == 989.0
    assert latency_report.device_peak_tflops("NVIDIA H100 PCIe", "fp16")[0] == 756.0
    assert latency_report.device_peak_tflops("NVIDIA H200", "fp16")[0] == 989.0
    assert latency_report.device_peak_tflops("NVIDIA A100-SXM4-80GB", "bf16")[0] == 312.0
    peak, note = latency_report.device_peak_tflops("NVIDIA H100 NVL", "fp16")
    assert peak is None and "no peak known" in note
    assert latency_report.device_peak_tflops("NVIDIA H100 80GB HBM3", "fp32")[0] is None
    assert latency_report.device_peak_tflops("CPU Some Chip (2 cores)", "auto")[0] is None


def test_quality_measures():
    ref = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert latency.psnr_db(ref, ref) is None
    # A uniform error of 0.01 has MSE 1e-4: PSNR = 40 dB (float64 rounding of ref + 0.01 only).
    assert latency.psnr_db(ref + 0.01, ref) == pytest.approx(40.0, abs=1e-9)
    g = torch.randn(64, 14, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert latency.relative_error(g * 1.5, g) == pytest.approx(0.5, rel=1e-12)
    assert latency.expected_n("render", 25, 3) == 72 and latency.expected_n("step", 25, 3) == 75
    assert latency.expected_n("vae_encoder", 25, 3) == 3


def test_rows_follow_the_backend_registry(monkeypatch):
    rows = latency.bench_rows()
    assert list(rows)[:2] == ["eager", "eager-triton"]
    assert set(rows) == set(networks.BACKENDS) | {"eager-triton"}
    assert rows["eager-triton"] == latency.Row("eager-triton", "eager", "triton")
    assert all(rows[name] == latency.Row(name, name, "torch") for name in networks.BACKENDS)
    # A backend registered later is a row (and a --backends choice) with no change in bench/.
    added = networks.Backend("later", "test backend", lambda request: "not here", lambda request: None)
    monkeypatch.setitem(networks.BACKENDS, "later", added)
    assert latency.bench_rows()["later"] == latency.Row("later", "later", "torch")
    args = latency.build_parser().parse_args(["--backends", "later"])
    assert [row.name for row in latency.check_args(args)] == ["eager", "later"]


def _bench_without_models(*argv: str) -> latency.Bench:
    """A Bench for what rows read before any network is built: the settings and the preset."""
    from types import SimpleNamespace

    args = latency.build_parser().parse_args(list(argv))
    return latency.Bench(args, torch.device("cpu"), models=SimpleNamespace(preset=get_preset("tiny")))


def test_triton_row_needs_cuda():
    bench, rows = _bench_without_models(), latency.bench_rows()
    assert "timed on CUDA only" in bench.row_unavailable(rows["eager-triton"])
    assert bench.row_unavailable(rows["eager"]) is None


def test_bad_settings_exit_2(capsys, tmp_path):
    for argv, words in ((["--backends", "eager,nope"], "unknown backend 'nope'"),
                        (["--steps", "1"], "--steps must be at least 2"),
                        (["--image", "/no/such.png"], "file not found"),
                        (["--checkpoint", "x"], "--checkpoint and --svd go together"),
                        (["--artefacts", str(tmp_path)], "no manifest.json in"),
                        (["--device", "cuda:0" if not torch.cuda.is_available() else "nope"], "device"),
                        (["--json", "/proc/no/r.json"], "--json: cannot create /proc/no")):
        assert latency.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("latency.py: error: ") and words in err[0], (argv, err)


def test_failing_backend_is_reported_not_raised(capsys, monkeypatch):
    def broken(request):
        raise RuntimeError("engine file truncated\nsecond line")

    monkeypatch.setitem(networks.BACKENDS, "broken",
                        networks.Backend("broken", "test backend", lambda request: None, broken))
    entry = latency.run_row(latency.bench_rows()["broken"], _bench_without_models())
    assert entry == {"name": "broken", "status": "failed", "renderer": "torch",
                     "reason": "RuntimeError: engine file truncated"}
    assert "engine file truncated" in capsys.readouterr().err
