"""`python bench/trt_check.py`: the TensorRT device check (needs an NVIDIA GPU and TensorRT 10.12+).

For each preset: export the ONNX graphs and build the engines (export/build.py's
`build_artefacts`, in ARTEFACTS/<preset>), then per network compare the engine with the eager
fp32 module on the same random inputs (relative error, max-abs) and time both (median of
CUDA-event timings), then run the recursive loop for --steps steps on the `trt` and the eager
backend with the same seed and report the PSNR of the 8 views. Prints one table, writes
bench/results/trt_check_<gpu>.json.

    python bench/trt_check.py --presets tiny                       # a few minutes
    python bench/trt_check.py --presets tiny,full --checkpoint CKPT --svd SVD --precision fp16

Without --checkpoint/--svd the full preset uses deterministic random weights (same shapes and
cost as the released model). Not run in CI: CI has neither a GPU nor TensorRT.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _time_ms(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.float() - b.float()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def check_preset(name: str, args) -> list[dict]:
    from ort3d.export.build import BuildOptions, build_artefacts
    from ort3d.export.specs import NETWORK_NAMES
    from ort3d.export.verify import compare
    from ort3d.models.checkpoint import build_models
    from ort3d.models.presets import get_preset
    from ort3d.runtime.backend_trt import TrtNetworks
    from ort3d.runtime.networks import EagerNetworks
    from ort3d.runtime.pipeline import PipelineOptions, RecursivePipeline

    real = name == "full" and args.checkpoint
    models = build_models(get_preset(name), checkpoint_dir=args.checkpoint if real else None,
                          svd_dir=args.svd if real else None, device="cuda", dtype=torch.float32)
    out = Path(args.artefacts) / name
    build_artefacts(models, out, BuildOptions(precision=args.precision), log=print)
    trt_nets = TrtNetworks(out, models.preset)
    rows = []
    for net in NETWORK_NAMES:
        spec = trt_nets.specs[net]
        module = spec.module_for_export(models).eval()
        inputs = {k: v.cuda() for k, v in spec.sample_inputs(11).items()}
        with torch.no_grad():
            eager = module(*(inputs[n] for n in spec.input_names))
            eager = dict(zip(spec.output_names, eager if isinstance(eager, tuple) else (eager,)))
            engine_ms = _time_ms(lambda: trt_nets.run(net, **inputs), args.repeats)
            got = {k: v.clone() for k, v in trt_nets.run(net, **inputs).items()}
            eager_ms = _time_ms(lambda: module(*(inputs[n] for n in spec.input_names)), args.repeats)
        # fp16 engines: the bar of docs/precision.md#parity-tolerances is 1e-2 per stage; fp32 engines 1e-4.
        tolerance = 1e-4 if args.precision == "fp32" else 1e-2
        worst = max(compare(net, got, eager, tolerance), key=lambda r: r.relative_error)
        rows.append({"preset": name, "network": net,
                     "precision": trt_nets.manifest["networks"][net]["engine"]["precision"],
                     "relative_error": worst.relative_error, "max_abs": worst.max_abs,
                     "passed": worst.passed, "engine_ms": engine_ms, "eager_fp32_ms": eager_ms})
    image = torch.rand(1, 3, models.preset.image_size, models.preset.image_size,
                       generator=torch.Generator().manual_seed(3)) * 2 - 1
    views = {}
    for nets in (EagerNetworks(models, "cuda"), trt_nets):
        with torch.inference_mode():
            result = RecursivePipeline(nets, "cuda", PipelineOptions(steps=args.steps, timing=False)).run(image, seed=42)
        views[nets.name] = result.views
    rows.append({"preset": name, "network": f"loop ({args.steps} steps)",
                 "views_psnr_db": _psnr(views["trt"], views["eager"])})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="trt_check.py", description=__doc__.split("\n\n")[0])
    # tiny by default: the full set's export and engine builds can outlast a 10-minute device call.
    p.add_argument("--presets", default="tiny", help="comma-separated: tiny, full (default tiny)")
    p.add_argument("--checkpoint", help="Ouroboros3D folder (full preset with real weights)")
    p.add_argument("--svd", help="SVD img2vid folder (with --checkpoint)")
    p.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--artefacts", default="trt_check_artefacts", help="where sets are built")
    p.add_argument("--steps", type=int, default=2, help="loop steps compared with eager")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per network")
    args = p.parse_args(argv)

    from ort3d.export.trt_build import host_identity, tensorrt_missing_reason

    missing = tensorrt_missing_reason()
    if missing:
        print(f"trt_check.py: error: {missing}", file=sys.stderr)
        return 2
    identity = host_identity()
    rows = []
    for preset in [s for s in args.presets.split(",") if s]:
        rows.extend(check_preset(preset, args))
        torch.cuda.empty_cache()     # the preset's models and engines went with check_preset
    print(f"\n{identity['gpu_name']} (sm {identity['compute_capability']}), TensorRT "
          f"{identity['tensorrt_version']}, engines {args.precision}")
    print(f"{'preset':<6} {'network':<16} {'prec':<5} {'rel err':>9} {'max abs':>9} "
          f"{'engine ms':>10} {'eager ms':>9}")
    for r in rows:
        if "views_psnr_db" in r:
            print(f"{r['preset']:<6} {r['network']:<16} views PSNR vs eager: {r['views_psnr_db']:.1f} dB")
        else:
            print(f"{r['preset']:<6} {r['network']:<16} {r['precision']:<5} {r['relative_error']:>9.2e} "
                  f"{r['max_abs']:>9.2e} {r['engine_ms']:>10.2f} {r['eager_fp32_ms']:>9.2f}"
                  f"{'' if r['passed'] else '  FAIL'}")
    RESULTS.mkdir(exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", identity["gpu_name"]).strip("-").lower()
    path = RESULTS / f"trt_check_{slug}.json"
    path.write_text(json.dumps({"device": identity, "precision": args.precision, "rows": rows}, indent=2))
    print(f"wrote {path}")
    return 0 if all(r.get("passed", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
