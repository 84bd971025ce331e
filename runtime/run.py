"""One `ort3d-run` session: models built once, then each input image processed end to end."""

from __future__ import annotations

import pathlib
import sys
import time

import torch

from ort3d.runtime import outputs
from ort3d.runtime.cli_common import EXIT_INPUT, EXIT_OK, EXIT_RUNTIME, default_preset, versions
from ort3d.runtime.networks import default_renderer, make_networks, precision_policy
from ort3d.runtime.pipeline import PipelineOptions, RecursivePipeline
from ort3d.runtime.preprocess import InputError, preprocess
from ort3d.runtime.timing import RunError

TINY_WARNING = ("no checkpoint given: running the built-in tiny model with random weights; "
                "the views and the 3D output will not resemble the input")


class Runner:
    def __init__(self, pipeline: RecursivePipeline, settings: dict, rembg_model, video_frames,
                 elevation, quiet: bool):
        self.pipeline = pipeline
        self.settings = settings
        self.rembg_model = rembg_model
        self.video_frames = video_frames      # 0: no video
        self.elevation = elevation
        self.quiet = quiet

    @classmethod
    def from_args(cls, args, device) -> "Runner":
        with_checkpoint = bool(args.checkpoint or args.svd)
        preset = default_preset(args)
        if not with_checkpoint and not args.quiet:
            print(f"ort3d-run: warning: {TINY_WARNING}", file=sys.stderr)
        nets = make_networks(args.backend, preset, device, checkpoint=args.checkpoint,
                             svd=args.svd, dtype=args.dtype, engines=args.engines,
                             temporal_context=args.temporal_context)
        renderer = args.renderer or default_renderer(args.backend, device)
        options = PipelineOptions(steps=args.steps, renderer=renderer,
                                  overlap_tiles_per_gaussian=args.overlap_tiles,
                                  exact_final_decode=args.exact_final_decode,
                                  check_every_stage=args.check_every_stage)
        pipeline = RecursivePipeline(nets, device, options)
        # eager and graph run our modules (graph holds them in its compute dtype, no autocast); the
        # exported backends run what their graphs/engines hold (see their manifest).
        ours = args.backend in ("eager", "graph")
        weight_dtype, autocast_dtype = precision_policy(args.dtype, device)
        if args.backend == "graph":
            weight_dtype, autocast_dtype = nets.dtype, None
        settings = {
            "preset": nets.preset.name, "checkpoint": args.checkpoint, "svd": args.svd,
            "weights": getattr(getattr(nets, "models", None), "sources", None),
            "steps": args.steps, "seed": args.seed, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": args.dtype if ours else None,
            "weight_dtype": str(weight_dtype).removeprefix("torch.") if ours else None,
            "autocast_dtype": (str(autocast_dtype).removeprefix("torch.")
                               if ours and autocast_dtype is not None else None),
            "backend": args.backend, "engines": str(getattr(nets, "directory", "")) or None,
            "renderer": renderer, "temporal_context": nets.temporal_context,
            "exact_final_decode": args.exact_final_decode,
            "orbit_frames": 0 if args.no_video else args.orbit_frames,
            "elevation": args.elevation, "rembg": args.rembg,
            "ply_layout": "raw" if args.ply_raw else "viewer",
        }
        return cls(pipeline, settings, args.rembg, 0 if args.no_video else args.orbit_frames,
                   args.elevation, args.quiet)

    def process(self, path: pathlib.Path, out_dir: pathlib.Path, stem: str) -> int:
        """Runs one input, writing OUT/<stem>_*; returns its exit status (0, 1 runtime failure,
        2 bad input)."""
        pipeline, preset = self.pipeline, self.pipeline.preset
        started = time.perf_counter()
        try:
            t0 = time.perf_counter()
            pre = preprocess(path, preset.image_size, rembg_model=self.rembg_model)
            preprocess_ms = (time.perf_counter() - t0) * 1e3
        except InputError as exc:
            print(f"ort3d-run: error: {exc}", file=sys.stderr)
            return EXIT_INPUT
        if not self.quiet:
            for note in pre.notes:
                print(f"ort3d-run: {path.name}: {note}", file=sys.stderr)
        try:
            with torch.inference_mode():
                result = pipeline.run(pre.image, seed=self.settings["seed"],
                                      progress=self._progress(path.name))
                t0 = time.perf_counter()
                frames = None
                if self.video_frames:
                    frames = pipeline.render_orbit(result.gaussians, self.video_frames, self.elevation)
                orbit_ms = (time.perf_counter() - t0) * 1e3
        except RunError as exc:
            print(f"ort3d-run: error: {path}: {exc}", file=sys.stderr)
            return EXIT_RUNTIME

        base = out_dir / stem
        written = []
        try:
            t0 = time.perf_counter()
            written.append(outputs.write_views_png(f"{base}_views.png", result.views.cpu(), pre.input_image))
            kept = outputs.write_ply(f"{base}.ply", result.gaussians.float().cpu(),
                                     layout=self.settings["ply_layout"])
            written.append(pathlib.Path(f"{base}.ply"))
            if frames is not None:
                written.append(outputs.write_video(f"{base}_orbit.mp4",
                                                   outputs.orbit_frames_uint8(frames.cpu())))
            outputs_ms = (time.perf_counter() - t0) * 1e3
            timings = result.timings.as_dict()
            timings["once_ms"].update(preprocess=preprocess_ms, orbit_render=orbit_ms, outputs=outputs_ms)
            report = {
                "input": str(path), "settings": self.settings, "versions": versions(),
                "background": pre.background, "renderer": pipeline.renderer.report(),
                # CUDA graphs of the graph backend: how many, capture time, replayed images.
                "graph_loop": getattr(pipeline.steps_runner, "report", lambda: None)(),
                "notes": pre.notes, "num_gaussians": int(result.gaussians.shape[0]),
                "num_gaussians_written": kept, "timings": timings,
                "wall_s": time.perf_counter() - started,
                "outputs": [pathlib.Path(p).name for p in written] + [f"{stem}_run.json"],
            }
            outputs.write_json(f"{base}_run.json", report)
        except (OSError, ValueError, KeyboardInterrupt) as exc:
            for p in written:   # no partial output set
                pathlib.Path(p).unlink(missing_ok=True)
            if isinstance(exc, KeyboardInterrupt):
                raise
            print(f"ort3d-run: error: {path}: cannot write outputs: {exc}", file=sys.stderr)
            return EXIT_RUNTIME
        if not self.quiet:
            print(f"ort3d-run: {path.name}: wrote {base}_views.png, {base}.ply"
                  + (f", {base}_orbit.mp4" if frames is not None else "") + f", {base}_run.json",
                  file=sys.stderr)
        return EXIT_OK

    def _progress(self, name: str):
        """A per-step progress bar on a terminal; nothing otherwise."""
        if self.quiet or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        bar = tqdm(total=self.pipeline.options.steps, desc=name, unit="step", leave=True)

        def advance(step: int) -> None:
            bar.update(1)
            if step + 1 == self.pipeline.options.steps:
                bar.close()
        return advance
