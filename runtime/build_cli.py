"""`ort3d-build`: a checkpoint (or the built-in tiny model) -> one ONNX graph per network,
TensorRT engines where TensorRT is installed, and the manifest that ties them (docs/manifest.md).

    ort3d-build --preset tiny --out engines/tiny --verify
    ort3d-build --checkpoint CKPT --svd SVD --out engines/full --precision fp16

`python export/build_engines.py` runs the same command. Bad input (missing or broken files,
impossible settings) prints one line on stderr and exits with code 2; a failed --verify exits 1.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time

from ort3d.runtime.cli_common import (
    EXIT_INPUT, EXIT_OK, EXIT_RUNTIME, add_temporal_context_argument, add_weight_arguments,
    default_preset, exit_on_interrupt, fail, input_error_types,
)

PROG = "ort3d-build"


def build_parser() -> argparse.ArgumentParser:
    from ort3d.export.build import PRECISIONS
    from ort3d.export.specs import NETWORK_NAMES

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export ONNX graphs (and TensorRT engines where TensorRT is installed) for "
                    "every ort3d network, with a manifest. Without --checkpoint/--svd it uses "
                    "the built-in tiny model (random weights).")
    add_weight_arguments(p)
    p.add_argument("--out", default="ort3d_engines", help="artefact folder (default ./ort3d_engines)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="engine precision, and of the ONNX graphs they are built from (graphs "
                        "without engines are fp32); the VAE nets stay fp32 in an fp16 set")
    p.add_argument("--onnx-only", action="store_true", help="export ONNX graphs, build no engines")
    p.add_argument("--formats", default="onnx",
                   help="comma-separated: onnx (ONNX graphs, + TensorRT engines where installed), "
                        "aoti (AOTInductor packages for the C++ host and --backend aoti, compiled "
                        "for --device; adds the feedback network) (default onnx)")
    p.add_argument("--verify", action="store_true",
                   help="run every graph in ONNX Runtime (CPU) against the eager model on fresh "
                        "random inputs and print the errors")
    p.add_argument("--verify-seed", type=int, default=None,
                   help="seed of the --verify inputs (default: a new random seed, printed)")
    p.add_argument("--networks", default=",".join(NETWORK_NAMES),
                   help=f"comma-separated subset of {','.join(NETWORK_NAMES)} (and feedback "
                        "with --formats aoti)")
    add_temporal_context_argument(p)
    p.add_argument("--no-simplify", action="store_true", help="skip the onnxslim pass")
    p.add_argument("--workspace-gb", type=float, default=8.0, help="TensorRT workspace pool limit in GiB (default 8)")
    p.add_argument("--device", default="cpu", help="where the eager models run for export (cpu, cuda)")
    return p


def _log(message: str) -> None:
    print(message, flush=True)


def run(args) -> int:
    import torch

    from ort3d.export.build import BuildOptions, build_artefacts
    from ort3d.export.specs import NETWORK_NAMES
    from ort3d.export.verify import format_table
    from ort3d.models.checkpoint import build_models

    with_checkpoint = bool(args.checkpoint or args.svd)
    preset = default_preset(args)
    seed = args.verify_seed if args.verify_seed is not None else secrets.randbelow(2**31)
    options = BuildOptions(precision=args.precision, onnx_only=args.onnx_only, verify=args.verify,
                           verify_seed=seed,
                           simplify_networks=() if args.no_simplify else NETWORK_NAMES,
                           temporal_context=args.temporal_context,
                           networks=tuple(n for n in args.networks.split(",") if n),
                           formats=tuple(f for f in args.formats.split(",") if f),
                           workspace_bytes=int(args.workspace_gb * (1 << 30)))
    options.check()
    started = time.perf_counter()
    _log(f"building the {preset.name} models on {args.device} "
         f"({'checkpoint' if with_checkpoint else 'random weights'}) ...")
    models = build_models(preset, checkpoint_dir=args.checkpoint, svd_dir=args.svd,
                          device=torch.device(args.device), dtype=torch.float32)
    report = build_artefacts(models, args.out, options, log=_log)
    if report.verify_rows:
        _log(f"\nverify (ONNX Runtime CPU vs eager fp32, inputs seed {seed}):")
        _log(format_table(report.verify_rows))
    _log(f"done in {time.perf_counter() - started:.1f} s")
    if any(not row.passed for row in report.verify_rows):
        fail(PROG, "--verify failed for "
             + ", ".join(sorted({r.network for r in report.verify_rows if not r.passed})))
        return EXIT_RUNTIME
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    with exit_on_interrupt(PROG):
        args = build_parser().parse_args(argv)
        try:
            return run(args)
        except input_error_types() as err:
            fail(PROG, str(err))
            return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
