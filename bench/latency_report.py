"""bench/latency.py's outputs: the environment, the device's peak, the JSON document (schema in
bench/schema/latency.schema.json), the stdout table and the CSV upserted by
(preset, backend, dtype, device)."""

from __future__ import annotations

import csv
import importlib.metadata as md
import importlib.util
import io
import os
import platform
from pathlib import Path

import torch

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "latency.schema.json"

# docs/architecture.md#per-step-cost: per-step FLOPs at the released size (torch.utils.flop_counter on the authors' modules).
SPEC_FULL_TFLOP = {"unet": 20.35, "vae_decode": 24.34}

# Dense fp16/bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets (no sparsity).
# Matched on torch.cuda.get_device_name in order; a name matching none gets no peak.
FP16_PEAKS = (
    (("H200",), 989.0),
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), None),        # listed so it is not mistaken for the SXM part
    (("H100",), 989.0),             # "NVIDIA H100 80GB HBM3" is the SXM part
    (("A100",), 312.0),
)


def device_peak_tflops(device_name: str, dtype_policy: str) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, note) for the precision the networks' matmuls run in."""
    if dtype_policy == "fp32" or device_name.startswith("CPU"):
        return None, ("no peak: fp32 mixes TF32 convolutions and fp32 matmuls" if dtype_policy == "fp32"
                      else "no peak known for CPUs")
    for words, peak in FP16_PEAKS:
        if all(w in device_name for w in words):
            if peak is None:
                break
            return peak, f"dense fp16/bf16 tensor-core peak of {device_name} (data sheet)"
    return None, f"no peak known for {device_name!r} (bench/latency_report.py FP16_PEAKS)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> dict:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return {"device_name": torch.cuda.get_device_name(device), "device_type": "cuda",
                "compute_capability": f"{major}.{minor}", "cpu_threads": torch.get_num_threads()}
    return {"device_name": f"CPU {_cpu_name()} ({os.cpu_count()} cores)", "device_type": "cpu",
            "compute_capability": None, "cpu_threads": torch.get_num_threads()}


def _version(*distributions: str, module: str | None = None) -> str | None:
    for dist in distributions:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    if module and importlib.util.find_spec(module) is not None:
        return getattr(__import__(module), "__version__", None)
    return None


def versions() -> dict[str, str | None]:
    from ort3d.models.version import __version__

    return {
        "python": platform.python_version(),
        "ort3d": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton", "pytorch-triton"),
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "onnxruntime": _version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": _version("tensorrt", "tensorrt-cu12", "tensorrt-cu13", module="tensorrt"),
    }


# ------------------------------------------------------------------------ stdout table
def _cell(stat: dict | None) -> str:
    if not stat:
        return "-"
    return f"{stat['median_ms']:.1f} [{stat['p20_ms']:.1f}-{stat['p80_ms']:.1f}]"


def _mib(entry: dict) -> str:
    return f"{entry['peak_memory']['bytes'] / 2**20:.0f} MiB"


def _tflops(entry: dict, stage: str) -> str:
    value = (entry.get("achieved_tflops") or {}).get(stage)
    if not value:
        return "-"
    frac = value.get("fraction_of_peak")
    return f"{value['tflops']:.2f}" + (f" ({100 * frac:.0f}%)" if frac is not None else "")


def _quality(entry: dict) -> str:
    q = entry.get("quality")
    if not q:
        return "reference"
    psnr = "identical" if q["views_identical"] else f"{q['views_psnr_db']:.1f} dB"
    return f"{psnr}, G {q['gaussians_rel_error']:.1e}"


def format_table(doc: dict) -> str:
    s, env = doc["settings"], doc["environment"]
    ok = [b for b in doc["backends"] if b["status"] == "ok"]
    lines = [f"ort3d latency: preset {s['preset']}, dtype {s['dtype']} (weights {s['weight_dtype']}, "
             f"autocast {s['autocast_dtype'] or 'off'}), {s['steps']} steps, warmup {s['warmup']}, "
             f"repeats {s['repeats']}, {s['weights']}",
             f"device {env['device_name']} ({s['timer']}); ms: median [p20-p80]"]
    width = 34
    rows = [("stage", [b["name"] for b in ok])]
    stage_names = list(dict.fromkeys(n for b in ok for n in b["stages"]))
    for name in stage_names:
        rows.append((f"{name} (n={ok[0]['stages'].get(name, {}).get('n', '-')})",
                     [_cell(b["stages"].get(name)) for b in ok]))
    rows.append(("step, untimed part", [f"{b['step_untimed_ms']:.2f}" for b in ok]))
    for name in dict.fromkeys(n for b in ok for n in b["once"]):
        rows.append((f"once: {name}", [_cell(b["once"].get(name)) for b in ok]))
    rows.append(("end-to-end", [_cell(b["end_to_end"]) for b in ok]))
    rows.append(("step speed-up vs eager", [f"{b['speedup_vs_eager']['step']:.2f}x" for b in ok]))
    rows.append(("peak memory", [_mib(b) for b in ok]))
    for stage in ("unet", "vae_decode"):
        rows.append((f"{stage} TFLOP/s (of peak)", [_tflops(b, stage) for b in ok]))
    rows.append(("quality (views PSNR, Gaussians)", [_quality(b) for b in ok]))
    for label, cells in rows:
        lines.append(label.ljust(width) + "".join(c.ljust(28) for c in cells).rstrip())
    flops, peak = doc["flops"], doc["peak"]
    if flops:
        lines.append("FLOPs per call: " + ", ".join(f"{k} {v['tflop']:.3g} T" for k, v in flops.items()
                                                     if isinstance(v, dict)) + f" ({flops['source']})")
    lines.append(f"peak: {peak['tflops'] if peak['tflops'] is not None else '-'} TFLOP/s; {peak['note']}")
    for b in doc["backends"]:
        if b["status"] != "ok":
            lines.append(f"{b['status']}: {b['name']}: {b['reason']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ CSV
CSV_KEY = ("preset", "backend", "dtype", "device")


def csv_rows(doc: dict) -> list[dict[str, str]]:
    """One row per backend that ran (skipped/failed ones stay in the JSON: a skip on one host
    must not erase a row measured on another run of the same device)."""
    s, env = doc["settings"], doc["environment"]
    rows = []
    for b in doc["backends"]:
        if b["status"] != "ok":
            continue
        row = {"preset": s["preset"], "backend": b["name"], "dtype": s["dtype"],
               "device": env["device_name"], "created_utc": doc["created_utc"],
               "torch": env["versions"]["torch"], "steps": s["steps"], "repeats": s["repeats"],
               "weights": s["weights"]}
        for name, stat in b["stages"].items():
            row[f"{name}_median_ms"] = f"{stat['median_ms']:.3f}"
        row["step_p20_ms"] = f"{b['stages']['step']['p20_ms']:.3f}"
        row["step_p80_ms"] = f"{b['stages']['step']['p80_ms']:.3f}"
        for name, stat in b["once"].items():
            row[f"once_{name}_median_ms"] = f"{stat['median_ms']:.3f}"
        row["end_to_end_median_ms"] = f"{b['end_to_end']['median_ms']:.3f}"
        row["peak_memory_mib"] = f"{b['peak_memory']['bytes'] / 2**20:.1f}"
        row["peak_memory_kind"] = b["peak_memory"]["kind"]
        for stage, value in (b.get("achieved_tflops") or {}).items():
            row[f"{stage}_tflops"] = f"{value['tflops']:.3f}"
        q = b.get("quality") or {}
        row["views_psnr_db"] = "" if q.get("views_psnr_db") is None else f"{q['views_psnr_db']:.2f}"
        row["gaussians_rel_error"] = "" if "gaussians_rel_error" not in q else f"{q['gaussians_rel_error']:.3e}"
        rows.append({k: str(v) for k, v in row.items()})
    return rows


def upsert_csv(path: Path, rows: list[dict[str, str]]) -> None:
    """Rows with the key of a new row are replaced; other rows and their order are kept.
    Columns are the union (new columns appended), written atomically."""
    path = Path(path)
    old_rows, fields = [], []
    if path.is_file():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            old_rows = list(reader)
    new_keys = {tuple(r[k] for k in CSV_KEY) for r in rows}
    kept = [r for r in old_rows if tuple(r.get(k, "") for k in CSV_KEY) not in new_keys]
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept + rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)
