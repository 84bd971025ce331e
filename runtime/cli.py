"""`ort3d-run IMAGE [IMAGE ...]`: one image in; 8 views, 3D Gaussians (.ply), an orbit video out.

Per input `<stem>`: `<stem>_views.png` (input + 8 views), `<stem>.ply` (3DGS layout),
`<stem>_orbit.mp4`, `<stem>_run.json` (settings, versions, per-step per-stage timings).
Bad input gives one line on stderr and exit code 2; other inputs still run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

from ort3d.runtime.cli_common import (
    EXIT_INPUT, EXIT_OK, UsageError, add_device_arguments, add_temporal_context_argument,
    add_weight_arguments, exit_on_interrupt, fail, input_error_types, resolve_device,
)

PROG = "ort3d-run"
OUTPUTS_EPILOG = (
    "Outputs: per input IMAGE, OUT/<stem>_views.png, <stem>.ply, <stem>_orbit.mp4 and "
    "<stem>_run.json. Files of an earlier run with the same names are replaced (each file is "
    "written completely, then renamed into place). Inputs whose names would collide in one run "
    "(a/x.png b/x.png) get their folder name added (a_x, b_x); nothing is overwritten within a run.")


def build_parser() -> argparse.ArgumentParser:
    from ort3d.models.scheduler import MIN_STEPS
    from ort3d.models.version import __version__
    from ort3d.kernels.feedback_dispatch import RENDERERS
    from ort3d.runtime.networks import BACKENDS

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Ouroboros3D inference: one image in, 8 consistent views and 3D Gaussians out. "
                    "Without --checkpoint/--svd it runs the built-in tiny model (random weights).",
        epilog=OUTPUTS_EPILOG,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="input image(s); alpha is used as the mask")
    p.add_argument("--out", default="ort3d_out", help="output folder (default: ./ort3d_out)")
    add_weight_arguments(p)
    p.add_argument("--steps", type=int, default=25,
                   help=f"denoising steps (default 25, at least {MIN_STEPS})")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    add_device_arguments(p)
    p.add_argument("--backend", choices=tuple(BACKENDS), default="eager",
                   help="; ".join(f"{b.name}: {b.summary}" for b in BACKENDS.values())
                        + ". The exported backends read --engines, or build their artefacts "
                          "once into the user cache ($XDG_CACHE_HOME/ort3d/engines)")
    p.add_argument("--engines", metavar="DIR", default=os.environ.get("ORT3D_ENGINES"),
                   help="artefact folder from `ort3d-build` (manifest.json) for the exported "
                        "backends (env ORT3D_ENGINES); default: the per-user cache")
    p.add_argument("--renderer", choices=tuple(RENDERERS), default=None,
                   help="feedback renderer (default: torch; triton for --backend graph on CUDA): "
                        + "; ".join(f"{k.name}: {k.summary}" for k in RENDERERS.values()))
    add_temporal_context_argument(p)
    p.add_argument("--exact-final-decode", action="store_true",
                   help="decode the final latents again instead of reusing the last step's decode")
    p.add_argument("--rembg", metavar="MODEL",
                   help="remove the background with rembg using this LOCAL model file "
                        "(never downloaded); default: use the image's alpha or take it as cut out")
    p.add_argument("--overlap-tiles", type=int, default=None, metavar="N",
                   help="triton renderer: start with N tile overlaps per Gaussian and view "
                        "(default: auto, 1.5x the first render's need); a render that needs more "
                        "grows the buffer and is redone, so a run never fails for lack of it")
    p.add_argument("--ply-raw", action="store_true",
                   help="write the LGM's raw (unnormalised, Q19) quaternions and scales as the "
                        "authors' code does; default: the scale and unit rotation of the covariance "
                        "ort3d renders, so 3DGS viewers show the same splats (docs/ply.md)")
    p.add_argument("--elevation", type=float, default=0.0, help="orbit video elevation in degrees")
    p.add_argument("--orbit-frames", type=int, default=180, help="orbit video frames (30 fps)")
    p.add_argument("--no-video", action="store_true", help="skip the orbit video")
    p.add_argument("--check-every-stage", action="store_true",
                   help="sync after every stage to stop at the first NaN/Inf (slower on GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notices")
    p.add_argument("--version", action="version", version=f"ort3d {__version__}")
    return p


def check_settings(args) -> None:
    """Settings that cannot work, refused before any model is built (UsageError)."""
    from ort3d.models.scheduler import MIN_STEPS

    if args.steps < MIN_STEPS:
        raise UsageError(f"--steps must be at least {MIN_STEPS} (got {args.steps})")
    if args.overlap_tiles is not None and args.overlap_tiles < 1:
        raise UsageError(f"--overlap-tiles must be at least 1 (got {args.overlap_tiles})")
    if args.orbit_frames < 1:
        raise UsageError(f"--orbit-frames must be at least 1 (got {args.orbit_frames})")


def check_out_dir(path: pathlib.Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ort3d-write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to output folder {path}: {exc.strerror or exc}") from None


def output_stems(paths: list[pathlib.Path]) -> list[str]:
    """One output stem per input, distinct within the run: the file's stem; where stems collide,
    the folder's name is added, then the suffix, then a counter (the same file given twice)."""
    def folder(path: pathlib.Path) -> str:
        return path.resolve().parent.name or "root"

    widenings = (lambda p: f"{folder(p)}_{p.stem}",
                 lambda p: f"{folder(p)}_{p.stem}_{p.suffix.lstrip('.')}")
    stems = [p.stem for p in paths]
    for widen in widenings:
        clash = {s for s in stems if stems.count(s) > 1}
        stems = [widen(p) if s in clash else s for p, s in zip(paths, stems)]
    seen: dict[str, int] = {}
    unique = []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        unique.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return unique


def main(argv: list[str] | None = None) -> int:
    with exit_on_interrupt(PROG):
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_settings(args)
        out_dir = pathlib.Path(args.out)
        check_out_dir(out_dir)
        device = resolve_device(args.device)
        from ort3d.runtime.run import Runner

        runner = Runner.from_args(args, device)
    except input_error_types() as exc:
        fail(PROG, str(exc))
        return EXIT_INPUT

    status = EXIT_OK
    paths = [pathlib.Path(p) for p in args.images]
    for path, stem in zip(paths, output_stems(paths)):
        status = max(status, runner.process(path, out_dir, stem))
    return status


if __name__ == "__main__":
    sys.exit(main())
