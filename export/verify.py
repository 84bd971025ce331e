"""`--verify`: each ONNX graph run in ONNX Runtime (CPU) against the eager module in the graph's
precision on fresh random inputs, reported as relative error ‖out − ref‖ / ‖ref‖ and max-abs per
output (docs/precision.md#parity-tolerances: fp32 paths match the eager reference to ~1e-5; a NaN
never passes)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ort3d.export.onnx_export import module_in_precision
from ort3d.export.ort_session import create_session
from ort3d.export.specs import NetworkSpec

# fp32 graph vs fp32 eager: only op order and fused kernels differ (measured ~1e-6 on tiny).
FP32_RELATIVE_TOLERANCE = 1e-4
# fp16 graph vs the same fp16 module in eager torch: fp16 keeps 11 significant bits (rounding
# 4.9e-4 per op), torch rounds every op's result to fp16 while ONNX Runtime's CPU provider runs
# the ops it has no fp16 kernel for in fp32 (it inserts casts), so the two drift apart by the
# accumulated per-op rounding: 5e-4 .. 2.7e-3 measured on the tiny networks. A wrong graph
# (a lost cast, a normalisation in fp16 that overflows) is off by far more.
FP16_RELATIVE_TOLERANCE = 1e-2
RELATIVE_TOLERANCES = {"fp32": FP32_RELATIVE_TOLERANCE, "fp16": FP16_RELATIVE_TOLERANCE}


@dataclass(frozen=True)
class VerifyRow:
    network: str
    output: str
    relative_error: float
    max_abs: float
    passed: bool


def compare(network: str, outputs: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
            tolerance: float = FP32_RELATIVE_TOLERANCE) -> list[VerifyRow]:
    rows = []
    for name, ref in reference.items():
        out, ref = outputs[name].double().cpu(), ref.double().cpu()
        diff = out - ref
        rel = (diff.norm() / ref.norm().clamp_min(1e-30)).item()
        max_abs = diff.abs().max().item()
        ok = math.isfinite(rel) and math.isfinite(max_abs) and rel <= tolerance
        rows.append(VerifyRow(network, name, rel, max_abs, ok))
    return rows


def verify_network(spec: NetworkSpec, module: torch.nn.Module, onnx_path: Path, seed: int,
                   precision: str = "fp32") -> list[VerifyRow]:
    """module: the fp32 export wrapper; the graph at `onnx_path` was exported in `precision`,
    and is compared with the module in that precision, at RELATIVE_TOLERANCES[precision]."""
    module = module_in_precision(spec, module, precision)
    inputs = spec.sample_inputs(seed)
    device = next(module.parameters()).device
    with torch.no_grad():
        result = module(*(inputs[n].to(device) for n in spec.input_names))
    result = result if isinstance(result, tuple) else (result,)
    reference = dict(zip(spec.output_names, result))
    session = create_session(onnx_path, ["CPUExecutionProvider"])
    values = session.run(spec.output_names, {k: v.numpy() for k, v in inputs.items()})
    outputs = {name: torch.from_numpy(v) for name, v in zip(spec.output_names, values)}
    return compare(spec.name, outputs, reference, RELATIVE_TOLERANCES[precision])


def format_table(rows: list[VerifyRow]) -> str:
    lines = [f"{'network':<14} {'output':<14} {'rel. error':>11} {'max abs':>11}  result",
             "-" * 62]
    for r in rows:
        lines.append(f"{r.network:<14} {r.output:<14} {r.relative_error:>11.3e} {r.max_abs:>11.3e}"
                     f"  {'ok' if r.passed else 'FAIL'}")
    return "\n".join(lines)
