"""`python bench/kernels_check.py`: parity and timing of the Triton renderer against its torch twin.

    python bench/kernels_check.py                          # GPU, full size (65,536 Gaussians, 8 views, 512²)
    python bench/kernels_check.py --device cpu --size tiny --runs 3 --warmup 1 --out /tmp/k.json

Full size renders an LGM-like synthetic object (`kernels/synthetic_gaussians.py`) with the 8
released feedback cameras (models/data/cameras.json). It checks the Triton stages against the
torch twins on the same inputs (projection, binning, compositing) and the whole feedback (images
and the adapters' [8,192,64,64] RGB/CCM inputs) against the torch chain, then times projection,
binning (and its two sorts), compositing+feedback and the whole feedback, median and p20/p80 over
--runs runs after --warmup (CUDA events), the torch reference in the same run, the whole
Triton feedback again under CUDA-graph replay, and (--sweep, on by default with CUDA) the
compositing kernel at a few (batch, num_warps) configurations. With CUDA and gsplat installed
(`pip install 'ort3d[gsplat]'`; run bench/gsplat_prebuild.py first, docs/gsplat.md) the same
stages of the gsplat renderer are timed in the same run as the peer, and its output is compared
with the torch chain (informational: the conventions gsplat does not expose differ) and with
gsplat.rasterization (bit for bit). Prints a table; writes JSON (default
bench/results/kernels_check-<device>-<size>.json). `--device cpu` runs the kernels through the
Triton interpreter (slow: use --size tiny) to exercise this script without a GPU; CUDA graphs are
then skipped. Exit codes: 0 ok, 1 no CUDA device, 2 ort3d not installed, 3 a parity check failed.
ort3d must be installed (on a GPU image without network: `pip install --no-deps
--no-build-isolation -e .` from the repository root).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = {   # name: (Gaussians, views, image side)
    "full": (65536, 8, 512),
    "tiny": (512, 2, 32),
}
EXIT_OK, EXIT_NO_CUDA, EXIT_NOT_INSTALLED, EXIT_PARITY = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/kernels_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--size", choices=tuple(SIZES), default="full")
    p.add_argument("--runs", type=int, default=50, help="timed runs per measurement (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="discarded runs first (default 10)")
    p.add_argument("--tiles-per-gaussian", type=int, default=None,
                   help="overlap capacity per (view, Gaussian) (default: the renderer's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=None,
                   help="also time compositing+feedback for other (batch, num_warps) configs "
                        "(default: on with CUDA, off on CPU)")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/kernels_check-<device>-<size>.json)")
    return p


# ---------------------------------------------------------------------------------------------
# timing

def timer(device: str):
    """fn -> list of milliseconds, one per run: CUDA events on a GPU, perf_counter on CPU."""
    import torch

    def measure(fn, runs: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            fn()
        if device == "cpu":
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            return times
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(runs)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]
    return measure


def summary(times: list[float] | None) -> dict | None:
    if not times:
        return None
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p20_ms": q[1], "p80_ms": q[7], "runs": len(times)}


# ---------------------------------------------------------------------------------------------
# parity

def rel_err(got, ref) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def check_parity(k, gaussians, cams, budget, H, W) -> dict:
    """Stage by stage on the same inputs, then the whole feedback against the torch chain."""
    import torch
    g = gaussians.float()
    N = g.shape[1]
    res = {}
    ref_proj = k.project_gaussians(g, cams.w2c, cams.K, H, W)
    # The reference culling (cull_transparent=False) so that tile lists can match exactly.
    proj = k.project_gaussians_triton(g, cams.w2c, cams.K, H, W, cull_transparent=False)
    got_proj = proj.to_projected()
    valid = ref_proj.valid
    res["projection"] = {
        "valid_mismatch": int((got_proj.valid != valid).sum()),
        "radius_mismatch": int((got_proj.radius != ref_proj.radius).sum()),
        "rect_mismatch": int(((got_proj.rect_min != ref_proj.rect_min) | (got_proj.rect_max != ref_proj.rect_max)).any(-1).sum()),
        "means2d_rel": rel_err(got_proj.means2d[valid], ref_proj.means2d[valid]),
        "conic_rel": rel_err(got_proj.conic[valid], ref_proj.conic[valid]),
        "depth_rel": rel_err(got_proj.depth[valid], ref_proj.depth[valid]),
    }
    # Integer decisions may flip where a 1-ulp difference between the devices' torch reductions
    # and the kernel meets a ceil/trunc boundary: allow 1e-5 of the Gaussians (benign: a tile at 3σ).
    r = res["projection"]
    flips = r["valid_mismatch"] + r["radius_mismatch"] + r["rect_mismatch"]
    r["ok"] = flips <= max(2, 1e-5 * valid.numel()) and max(r["means2d_rel"], r["conic_rel"], r["depth_rel"]) <= 1e-5

    bins = k.bin_gaussians_triton(proj, H, W, budget.capacity)
    needed = int(bins.needed)
    ok_capacity = needed <= budget.capacity
    ref_bins = k.bin_gaussians(got_proj, H, W)               # same projection: isolates binning
    got_bins = bins.to_binned(N) if ok_capacity else None
    culled = k.bin_gaussians_triton(k.project_gaussians_triton(g, cams.w2c, cams.K, H, W), H, W, budget.capacity)
    res["binning"] = {
        "overlaps": needed, "overlaps_render_path": int(culled.needed), "capacity": budget.capacity,
        "ok": bool(ok_capacity and torch.equal(got_bins.gaussian_ids, ref_bins.gaussian_ids)
                   and torch.equal(got_bins.tile_count, ref_bins.tile_count)),
    }

    comp = k.composite_triton(proj, bins, H, W)
    ref_comp = k.composite_tiles(got_proj, ref_bins, g[..., 11:14], g[..., 3], H, W)
    res["compositing"] = {f"{n}_rel": rel_err(getattr(comp, n), getattr(ref_comp, n)) for n in ("rgb", "alpha", "depth")}
    res["compositing"]["ok"] = max(res["compositing"].values()) <= 1e-5

    out = k.render_feedback(gaussians, cams, renderer="triton", want_images=True, budget=budget)
    ref = k.render_feedback(gaussians, cams, renderer="torch", want_images=True)
    ccm_diff = (out.ccm - ref.ccm).abs()
    res["feedback"] = {
        "images_rgb_rel": rel_err(out.images.rgb, ref.images.rgb),
        "images_depth_rel": rel_err(out.images.depth, ref.images.depth),
        "feedback_rgb_rel": rel_err(out.rgb, ref.rgb),
        "feedback_ccm_max_abs": float(ccm_diff.max()),
        "feedback_ccm_frac_differing": float((ccm_diff > 0).float().mean()),
        "feedback_layout_exact": bool(torch.equal(out.rgb, k.pixel_unshuffle_feedback(out.images.rgb.flatten(0, 1)))),
    }
    f = res["feedback"]
    # CCM values are fp16 (Q5): a depth rounding difference may flip one fp16 ulp (2^-11 in [0.5, 1)).
    f["ok"] = (f["images_rgb_rel"] <= 1e-5 and f["images_depth_rel"] <= 1e-5 and f["feedback_rgb_rel"] <= 1e-5
               and f["feedback_ccm_max_abs"] <= 2.0 ** -11 and f["feedback_ccm_frac_differing"] < 0.01
               and f["feedback_layout_exact"])
    return res


# ---------------------------------------------------------------------------------------------
# timings

def measure_all(k, gaussians, cams, budget, H, W, device, runs, warmup) -> dict:
    import torch
    measure = timer(device)
    g = gaussians.float()
    proj = k.project_gaussians_triton(g, cams.w2c, cams.K, H, W)
    bins = k.bin_gaussians_triton(proj, H, W, budget.capacity)
    ref_proj = k.project_gaussians(g, cams.w2c, cams.K, H, W)
    ref_bins = k.bin_gaussians(ref_proj, H, W)
    fb_cams = (cams.c2w, cams.intrinsics_norm)
    order = torch.sort(proj.sort_key, dim=1, stable=True).indices
    keys = torch.full((budget.capacity,), bins.tiles_x * bins.tiles_y * proj.sort_key.shape[0],
                      dtype=k.key_dtype(bins.tiles_x * bins.tiles_y * proj.sort_key.shape[0]), device=g.device)
    ends = torch.cumsum(torch.gather(proj.tiles_touched, 1, order).reshape(-1), 0).view_as(order)
    ids = torch.empty(budget.capacity, dtype=torch.int32, device=g.device)
    k.emit_overlaps(order, ends, proj.rect, keys, ids, bins.tiles_x, bins.tiles_x * bins.tiles_y)

    def torch_composite_feedback():
        images = k.composite_tiles(ref_proj, ref_bins, g[..., 11:14], g[..., 3], H, W)
        return k.feedback_maps(images, cams.c2w, cams.intrinsics_norm, True, torch.float16)

    rows = {
        "projection": (lambda: k.project_gaussians_triton(g, cams.w2c, cams.K, H, W),
                       lambda: k.project_gaussians(g, cams.w2c, cams.K, H, W)),
        "binning": (lambda: k.bin_gaussians_triton(proj, H, W, budget.capacity),
                    lambda: k.bin_gaussians(ref_proj, H, W)),
        "binning: depth sort": (lambda: torch.sort(proj.sort_key, dim=1, stable=True), None),
        "binning: tile sort": (lambda: torch.sort(keys, stable=True), None),
        "compositing+feedback": (lambda: k.composite_triton(proj, bins, H, W, want_images=False,
                                                            feedback_cameras=fb_cams),
                                 torch_composite_feedback),
        "whole feedback": (lambda: k.render_feedback(gaussians, cams, "triton", budget=budget),
                           lambda: k.render_feedback(gaussians, cams, "torch")),
    }
    table = {}
    for name, (triton_fn, torch_fn) in rows.items():
        table[name] = {"triton": summary(measure(triton_fn, runs, warmup)),
                       "torch": summary(measure(torch_fn, runs, warmup)) if torch_fn else None}
    table["whole feedback, CUDA graph"] = {
        "triton": summary(graph_times(k, gaussians, cams, budget, measure, runs, warmup)) if device == "cuda" else None,
        "torch": None}
    return table


SWEEP = ((4, 4), (8, 4), (8, 8), (16, 4), (16, 8))   # (Gaussians per unrolled batch, warps)


def composite_sweep(k, gaussians, cams, budget, H, W, measure, runs, warmup) -> list[dict]:
    """Compositing+feedback timings for each (batch, num_warps) configuration."""
    proj = k.project_gaussians_triton(gaussians.float(), cams.w2c, cams.K, H, W)
    bins = k.bin_gaussians_triton(proj, H, W, budget.capacity)
    fb_cams = (cams.c2w, cams.intrinsics_norm)
    rows = []
    for batch, warps in SWEEP:
        def run():
            return k.composite_triton(proj, bins, H, W, want_images=False, feedback_cameras=fb_cams,
                                      batch=batch, num_warps=warps)
        rows.append({"batch": batch, "num_warps": warps, "timing": summary(measure(run, runs, warmup))})
    return rows


def graph_times(k, gaussians, cams, budget, measure, runs, warmup) -> list[float]:
    """Capture the whole Triton feedback once, check a replay equals the eager result, time replays."""
    import torch
    static = gaussians.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            k.render_feedback(static, cams, "triton", budget=budget)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = k.render_feedback(static, cams, "triton", budget=budget)
    graph.replay()
    eager = k.render_feedback(static, cams, "triton", budget=budget)
    torch.cuda.synchronize()
    if not (torch.equal(captured.rgb, eager.rgb) and torch.equal(captured.ccm, eager.ccm)):
        raise RuntimeError("CUDA-graph replay differs from the eager Triton feedback")
    return measure(graph.replay, runs, warmup)


def gsplat_peer(k, gaussians, cams, H, W, measure, runs, warmup) -> dict:
    """gsplat on the same scene in the same run: parity and per-stage timings, or why it is skipped.

    Stages as the table's rows: projection (ort3d -> gsplat inputs, Σ from the raw quaternion, and
    gsplat's projection), binning (tile intersection + offsets), compositing+feedback (gsplat's
    compositing + the reference CCM/unshuffle), whole feedback. No CUDA graph: gsplat sizes its
    tile-intersection buffer from a device count read on the host.
    """
    import torch
    gs = k.gsplat
    try:
        stages = gs.cuda_stages(gaussians.device)
    except k.RendererUnavailable as error:
        return {"skipped": str(error)}
    import gsplat
    out = k.render_feedback(gaussians, cams, renderer="gsplat", want_images=True)
    ref = k.render_feedback(gaussians, cams, renderer="torch", want_images=True)
    direct = gs.render_gaussians_rasterization(gaussians, cams.w2c, cams.K, H, W)
    ccm_diff = (out.ccm - ref.ccm).abs()
    parity = {
        "equals_gsplat_rasterization": all(torch.equal(getattr(out.images, n), getattr(direct, n))
                                           for n in ("rgb", "alpha", "depth")),
        "images_rgb_rel": rel_err(out.images.rgb, ref.images.rgb),
        "images_alpha_rel": rel_err(out.images.alpha, ref.images.alpha),
        "images_depth_rel": rel_err(out.images.depth, ref.images.depth),
        "feedback_rgb_rel": rel_err(out.rgb, ref.rgb),
        "feedback_ccm_max_abs": float(ccm_diff.max()),
        "feedback_ccm_frac_differing": float((ccm_diff > 0).float().mean()),
    }

    inputs = gs.gsplat_inputs(gaussians, cams.w2c, cams.K)
    projected = gs.project_stage(stages, inputs, 0, H, W)
    binned = gs.bin_stage(stages, projected, H, W)

    def project():
        return gs.project_stage(stages, gs.gsplat_inputs(gaussians, cams.w2c, cams.K), 0, H, W)

    def composite_feedback():
        images = gs.composite_stage(stages, inputs, 0, projected, binned, H, W)
        return k.feedback_maps(images, cams.c2w, cams.intrinsics_norm, True, torch.float16)

    rows = {"projection": project, "binning": lambda: gs.bin_stage(stages, projected, H, W),
            "compositing+feedback": composite_feedback,
            "whole feedback": lambda: k.render_feedback(gaussians, cams, renderer="gsplat")}
    return {"version": gsplat.__version__, "parity": parity,
            "timings": {name: summary(measure(fn, runs, warmup)) for name, fn in rows.items()}}


# ---------------------------------------------------------------------------------------------

def load_kernels():
    """Import the renderer after TRITON_INTERPRET is settled; one namespace for the script."""
    from types import SimpleNamespace

    from ort3d.kernels import feedback, render, triton_binning, triton_composite, triton_project
    from ort3d.kernels import feedback_dispatch, gsplat_render, synthetic_gaussians, triton_render
    return SimpleNamespace(
        gsplat=gsplat_render,
        project_gaussians=render.project_gaussians, bin_gaussians=render.bin_gaussians,
        composite_tiles=render.composite_tiles, feedback_maps=feedback.feedback_maps,
        pixel_unshuffle_feedback=feedback.pixel_unshuffle_feedback,
        project_gaussians_triton=triton_project.project_gaussians_triton,
        bin_gaussians_triton=triton_binning.bin_gaussians_triton,
        emit_overlaps=triton_binning.emit_overlaps, key_dtype=triton_binning.key_dtype,
        composite_triton=triton_composite.composite_triton,
        render_feedback=feedback_dispatch.render_feedback,
        RendererUnavailable=feedback_dispatch.RendererUnavailable,
        prepare_render_cameras=feedback_dispatch.prepare_render_cameras,
        OverlapBudget=triton_render.OverlapBudget,
        DEFAULT_TILES_PER_GAUSSIAN=triton_render.DEFAULT_TILES_PER_GAUSSIAN,
        lgm_like_gaussians=synthetic_gaussians.lgm_like_gaussians)


def fmt(s: dict | None) -> str:
    return "—" if s is None else f"{s['median_ms']:9.3f} [{s['p20_ms']:.3f}, {s['p80_ms']:.3f}]"


def print_report(info: dict, parity: dict, table: dict, peer: dict) -> None:
    print(f"device: {info['device_name']}  torch {info['torch']}  triton {info['triton']}  "
          f"size: {info['gaussians']} Gaussians, {info['views']} views, {info['height']}×{info['width']}")
    b = parity["binning"]
    print(f"overlaps: {b['overlaps']} ({b['overlaps_render_path']} after culling opacity < 1/255) "
          f"of capacity {b['capacity']}")
    for stage, r in parity.items():
        detail = ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items() if k != "ok")
        print(f"parity {stage:12s} {'OK  ' if r['ok'] else 'FAIL'} {detail}")
    if "skipped" in peer:
        print(f"gsplat peer skipped: {peer['skipped']}")
    else:
        detail = ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in peer["parity"].items())
        print(f"gsplat {peer['version']} vs torch (conventions differ, docs/gsplat.md): {detail}")
    print(f"{'stage':28s} {'triton ms median [p20, p80]':>32s} {'torch ms median [p20, p80]':>32s} "
          f"{'gsplat ms median [p20, p80]':>32s} {'torch/triton':>12s} {'gsplat/triton':>13s}")

    def ratio(row, other):
        return f"{row[other]['median_ms'] / row['triton']['median_ms']:.2f}×" if row.get(other) and row["triton"] else ""
    for name, row in table.items():
        print(f"{name:28s} {fmt(row['triton']):>32s} {fmt(row['torch']):>32s} {fmt(row.get('gsplat')):>32s} "
              f"{ratio(row, 'torch'):>12s} {ratio(row, 'gsplat'):>13s}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if importlib.util.find_spec("ort3d") is None:
        print("kernels_check: ort3d is not installed; from the repository root run "
              "`pip install --no-deps --no-build-isolation -e .`", file=sys.stderr)
        return EXIT_NOT_INSTALLED
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"      # must precede the first `import triton`
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("kernels_check: no CUDA device here; this check needs an NVIDIA GPU "
              "(use --device cpu --size tiny to exercise the script through the Triton interpreter)",
              file=sys.stderr)
        return EXIT_NO_CUDA
    import triton

    from ort3d.models.cameras import load_feedback_cameras
    k = load_kernels()

    num, views, side = SIZES[args.size]
    device = args.device
    cams_all = load_feedback_cameras()
    cams = k.prepare_render_cameras(cams_all.c2w[:views], cams_all.fov_deg[:views],
                                    cams_all.intrinsics[:views], side, side, device=device)
    gaussians = k.lgm_like_gaussians(num, seed=args.seed, device=device)
    tiles = args.tiles_per_gaussian or k.DEFAULT_TILES_PER_GAUSSIAN
    budget = k.OverlapBudget.for_scene(views, num, device=device, tiles_per_gaussian=tiles)

    parity = check_parity(k, gaussians, cams, budget, side, side)
    table = measure_all(k, gaussians, cams, budget, side, side, device, args.runs, args.warmup)
    sweep = (composite_sweep(k, gaussians, cams, budget, side, side, timer(device), args.runs, args.warmup)
             if (args.sweep if args.sweep is not None else device == "cuda") else [])
    peer = (gsplat_peer(k, gaussians, cams, side, side, timer(device), args.runs, args.warmup) if device == "cuda"
            else {"skipped": "gsplat's rasteriser is CUDA-only (the cpu run exercises the Triton interpreter)"})
    for name, timing in peer.get("timings", {}).items():
        table[name]["gsplat"] = timing
    budget.check()
    info = {
        "device_name": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or platform.machine()}, Triton interpreter)",
        "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
        "gaussians": num, "views": views, "height": side, "width": side, "size": args.size,
        "runs": args.runs, "warmup": args.warmup, "tiles_per_gaussian": tiles,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "scene": "kernels/synthetic_gaussians.lgm_like_gaussians, released feedback cameras",
    }
    print_report(info, parity, table, peer)
    for row in sweep:
        print(f"compositing+feedback, batch {row['batch']:2d}, {row['num_warps']} warps: {fmt(row['timing'])}")
    slug = re.sub(r"[^a-z0-9]+", "-", info["device_name"].split(" (")[0].lower()).strip("-")
    out = args.out or HERE / "results" / f"kernels_check-{slug}-{args.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "parity": parity, "timings": table,
                                "composite_sweep": sweep, "gsplat": peer}, indent=1))
    print(f"wrote {out}")
    return EXIT_OK if all(r["ok"] for r in parity.values()) else EXIT_PARITY


if __name__ == "__main__":
    sys.exit(main())
