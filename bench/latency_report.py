"""bench/latency.py's outputs: the environment block, the device's peak, the JSON document (schema
in bench/schema/latency.schema.json), the stdout table, the CSV upserted by
(preset, backend, dtype, device) and the PNG bar chart. Every file is written atomically
(export/atomic.py): an interrupted or failed bench leaves no half-written output."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ort3d.export.atomic import atomic_path, atomic_write
from ort3d.runtime.cli_common import versions

SCHEMA_VERSION = 2

# docs/architecture.md#per-step-cost: the reference's per-call TFLOP at the released size
# (torch.utils.flop_counter on the authors' modules), recorded beside our own count at `full`.
REFERENCE_FULL_TFLOP = {"unet": 20.35, "vae_decode": 24.34}

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


def environment(device: torch.device) -> dict:
    """The JSON's `environment`: the device, torch's CPU threads and the package versions."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        described = {"device_name": torch.cuda.get_device_name(device), "device_type": "cuda",
                     "compute_capability": f"{major}.{minor}"}
    else:
        described = {"device_name": f"CPU {_cpu_name()} ({os.cpu_count()} cores)", "device_type": "cpu",
                     "compute_capability": None}
    return {**described, "cpu_threads": torch.get_num_threads(), "versions": versions()}


def write_json(path: Path, doc: dict) -> None:
    atomic_write(path, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())


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


def _speedup(entry: dict) -> str:
    speedup = entry["speedup_vs_eager"]   # None when the eager reference itself failed
    return "-" if speedup is None else f"{speedup['step']:.2f}x"


def _quality(entry: dict) -> str:
    q = entry["quality"]
    if q is None:   # the reference's own row, or no reference to compare with
        return "-" if entry["speedup_vs_eager"] is None else "reference"
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
    rows.append(("step speed-up vs eager", [_speedup(b) for b in ok]))
    rows.append(("peak memory", [_mib(b) for b in ok]))
    for stage in ("unet", "vae_decode"):
        rows.append((f"{stage} TFLOP/s (of peak)", [_tflops(b, stage) for b in ok]))
    rows.append(("quality (views PSNR, Gaussians)", [_quality(b) for b in ok]))
    for label, cells in rows:
        lines.append(label.ljust(width) + "".join(c.ljust(28) for c in cells).rstrip())
    flops, peak = doc["flops"], doc["peak"]
    if flops:
        lines.append("FLOPs per call: " + ", ".join(f"{k} {flops[k]['tflop']:.3g} T" for k in ("unet", "vae_decode"))
                     + f" ({flops['source']})")
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
    Columns are the union (new columns appended)."""
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
    atomic_write(path, buffer.getvalue().encode())


# ------------------------------------------------------------------------ PNG
# One stacked bar of per-step stage medians per backend, drawn with Pillow (already a runtime
# dependency), so that no plotting library is needed.
COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f")
WIDTH, BAR_HEIGHT, LEFT, RIGHT, TOP = 960, 34, 130, 80, 56


def _nice_step(span: float) -> float:
    """A 1/2/5 × 10^k tick spacing giving about 5 ticks over `span`."""
    raw = span / 5
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def write_plot(doc: dict, path: Path) -> None:
    """The chart of the backends that ran (at least one)."""
    backends = [b for b in doc["backends"] if b["status"] == "ok"]
    stages = [n for n in dict.fromkeys(n for b in backends for n in b["stages"]) if n != "step"]
    total = max(sum(b["stages"][n]["median_ms"] for n in stages if n in b["stages"]) for b in backends)
    total = max(total, 1e-3)
    plot_w = WIDTH - LEFT - RIGHT
    legend_rows = math.ceil(len(stages) / 4)
    height = TOP + len(backends) * (BAR_HEIGHT + 14) + 40 + legend_rows * 20 + 16
    img = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    s = doc["settings"]
    draw.text((LEFT, 10), f"ort3d per-step stage medians (ms): preset {s['preset']}, dtype {s['dtype']}, "
              f"{s['steps']} steps", fill="black", font=font)
    draw.text((LEFT, 26), doc["environment"]["device_name"], fill="#555555", font=font)

    scale = plot_w / total
    y = TOP
    for b in backends:
        draw.text((8, y + BAR_HEIGHT // 2 - 6), b["name"], fill="black", font=font)
        x = LEFT
        for i, name in enumerate(stages):
            ms = b["stages"].get(name, {}).get("median_ms", 0.0)
            w = ms * scale
            if w > 0:
                draw.rectangle([x, y, x + w, y + BAR_HEIGHT], fill=COLOURS[i % len(COLOURS)])
            x += w
        draw.text((x + 4, y + BAR_HEIGHT // 2 - 6), f"{(x - LEFT) / scale:.1f}", fill="black", font=font)
        y += BAR_HEIGHT + 14

    draw.line([LEFT, y, LEFT + plot_w, y], fill="black")
    step = _nice_step(total)
    tick = 0.0
    while tick <= total * 1.0001:
        tx = LEFT + tick * scale
        draw.line([tx, y, tx, y + 4], fill="black")
        draw.text((tx - 8, y + 6), f"{tick:g}", fill="black", font=font)
        tick += step
    y += 30
    for i, name in enumerate(stages):
        lx, ly = LEFT + (i % 4) * 190, y + (i // 4) * 20
        draw.rectangle([lx, ly, lx + 12, ly + 12], fill=COLOURS[i % len(COLOURS)])
        draw.text((lx + 18, ly), name, fill="black", font=font)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
