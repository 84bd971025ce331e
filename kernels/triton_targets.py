"""Every Triton kernel variant the renderer launches, compiled for real GPU targets without a GPU.

Triton's CPU interpreter, which runs the kernel tests, accepts code that its GPU compiler rejects
and says nothing about registers. Here the renderer's own entry points run on meta tensors (shapes
only: nothing is computed, so full size costs nothing) with every kernel launch recorded instead
of run; each distinct launch is then specialised exactly as `kernel[grid](...)` would specialise
it (argument dtypes, 16-byte alignment, integers divisible by 16 or equal to 1, constexprs,
num_warps) and compiled for a `GPUTarget` to PTX and a cubin with Triton's bundled ptxas. The
registers and local memory per thread come from its bundled cuobjdump: the numbers
`CompiledKernel.n_regs` and `n_spills` (= local bytes / 4) give once the cubin is loaded on a GPU.

    python -m ort3d.kernels.triton_targets --scene tiny=8,4096,128 --scene full=8,65536,512

A new constexpr, argument type or launch option is picked up by the recording, and a new kernel
no recorded launch reaches is reported (exit code 1); a new option of the entry points needs a
line in RENDER_CALLS. Needs Triton's CUDA backend and TRITON_INTERPRET unset or 0 (the
interpreter replaces the kernels when they are defined).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction, create_function_from_signature

import ort3d.kernels
from ort3d.kernels.feedback_dispatch import prepare_render_cameras, render_feedback, renderer_kind
from ort3d.kernels.render_constants import UNSHUFFLE
from ort3d.kernels.synthetic_gaussians import look_at_c2w
from ort3d.kernels.triton_project import project_gaussians_triton
from ort3d.kernels.triton_render import OverlapBudget, render_gaussians_triton, with_headroom

DEFAULT_ARCHS = (90, 80)   # Hopper (H100, H200) and Ampere (A100)


class Scene(NamedTuple):
    name: str
    views: int
    gaussians: int
    side: int               # square renders, side × side pixels


class SceneTensors(NamedTuple):
    gaussians: torch.Tensor
    cameras: object         # feedback_dispatch.RenderCameras


DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _loop_render(matmul_dtype: torch.dtype, dtype: torch.dtype, grown: bool = False):
    """One render of the loop's renderer object: its first render's overlap capacity, or (grown)
    one as after_step sets it (triton_render.with_headroom of a need that is not a multiple of 16)."""
    def call(s: SceneTensors):
        options = {"matmul_dtype": matmul_dtype, "dtype": dtype}
        if grown:
            options["budget"] = OverlapBudget(with_headroom(16 * s.gaussians.shape[1] + 1), device="meta")
        return renderer_kind("triton").create(s.cameras, **options)(s.gaussians)
    return call


# What the runtime and the checks launch. The loop (runtime/pipeline.py) renders with its
# backend's CCM matmul dtype (fp16 under fp16 autocast, else fp32) into maps in the adapters'
# input dtype (fp32; the graph backend's fp16 or bf16), then re-sizes the overlap buffer between
# steps. The checks (bench/kernels_check.py, the CUDA tests) add the plain images to the feedback,
# render images alone (render_gaussians_triton, the drop-in renderer) and project with the
# reference's culling. Not here: kernels_check's (batch, num_warps) sweep, a bench experiment.
RENDER_CALLS = {
    **{f"loop: CCM {DTYPE_NAMES[m]}, maps {DTYPE_NAMES[d]}": _loop_render(m, d)
       for m in (torch.float16, torch.float32) for d in (torch.float32, torch.float16, torch.bfloat16)},
    "loop: grown overlap capacity": _loop_render(torch.float16, torch.float32, grown=True),
    "checks: feedback + images": lambda s: render_feedback(s.gaussians, s.cameras, "triton", want_images=True),
    "checks: images": lambda s: render_gaussians_triton(s.gaussians, s.cameras.w2c, s.cameras.K,
                                                        s.cameras.height, s.cameras.width),
    "checks: reference culling": lambda s: project_gaussians_triton(s.gaussians, s.cameras.w2c, s.cameras.K,
                                                                    s.cameras.height, s.cameras.width,
                                                                    cull_transparent=False),
}


def scene_tensors(scene: Scene) -> SceneTensors:
    """Meta tensors of the scene's shapes (cameras are built on the CPU, then moved)."""
    c2w = look_at_c2w(torch.linspace(0.0, 360.0, scene.views + 1)[:-1].tolist())
    intrinsics = torch.tensor([[1.4, 0.0, 0.5], [0.0, 1.4, 0.5], [0.0, 0.0, 1.0]]).expand(scene.views, 3, 3)
    cameras = prepare_render_cameras(c2w, 39.6, intrinsics, scene.side, scene.side, device="meta")
    return SceneTensors(torch.empty(1, scene.gaussians, 14, device="meta"), cameras)


class Launch(NamedTuple):
    kernel: JITFunction
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def recording_launches():
    """Inside, `kernel[grid](...)` of every Triton kernel appends a Launch and runs nothing."""
    launches: list[Launch] = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs))

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


@dataclass
class Variant:
    """One specialisation of one kernel, and which scenes and calls launch it."""
    kernel: JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    options: object
    scenes: set = field(default_factory=set)
    calls: set = field(default_factory=set)

    def key(self) -> tuple:
        """What makes two launches one compiled kernel, whatever the target: the kernel, its
        argument types and specialisations, and the launch options the wrapper chose."""
        o = self.options
        return (self.kernel.fn.__qualname__, repr(self.signature), repr(sorted(self.constexprs.items())),
                repr(sorted(self.attrs.items())), o.num_warps, o.num_stages, o.num_ctas, o.enable_fp_fusion)

    def named_constexprs(self) -> dict:
        names = self.kernel.arg_names
        return {names[path[0]]: value for path, value in sorted(self.constexprs.items())}

    def divisible_ints(self) -> list[str]:
        """Integer arguments specialised as multiples of 16 (pointers always are: aligned)."""
        names = self.kernel.arg_names
        return [names[i] for (i,), attr in sorted(self.attrs.items())
                if "tt.divisibility" in str(attr) and not self.signature[names[i]].startswith("*")]


def specialise(launch: Launch, target: GPUTarget):
    """(options, signature, constexprs, attrs) as `JITFunction.run` derives them for this launch."""
    backend = make_backend(target)
    binder = create_function_from_signature(launch.kernel.signature, launch.kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    return launch.kernel._pack_args(backend, launch.kwargs, bound, specialization, options)


def collect_variants(scenes: list[Scene], target: GPUTarget) -> list[Variant]:
    """Run every RENDER_CALLS entry for every scene and group the launches by specialisation."""
    variants: dict[tuple, Variant] = {}   # by Variant.key()
    for scene in scenes:
        tensors = scene_tensors(scene)
        for call_name, call in RENDER_CALLS.items():
            with recording_launches() as launches:
                call(tensors)
            for launch in launches:
                options, signature, constexprs, attrs = specialise(launch, target)
                found = Variant(launch.kernel, signature, constexprs, attrs, options)
                variant = variants.setdefault(found.key(), found)
                variant.scenes.add(scene.name)
                variant.calls.add(call_name)
    return sorted(variants.values(), key=lambda v: (v.kernel.fn.__qualname__, repr(v.named_constexprs()),
                                                    sorted(v.scenes)))


def jit_functions() -> list:
    """Every @triton.jit function defined in an ort3d.kernels module (kernels and device helpers)."""
    found = []
    for info in pkgutil.iter_modules(ort3d.kernels.__path__):
        module = importlib.import_module(f"ort3d.kernels.{info.name}")
        found += [obj for obj in vars(module).values()
                  if hasattr(obj, "fn") and hasattr(obj, "arg_names")
                  and getattr(obj.fn, "__module__", None) == module.__name__]
    return found


def called_jit_functions(kernel: JITFunction) -> set:
    """The @triton.jit functions a kernel calls, directly or through other device functions."""
    seen, todo = set(), [kernel]
    while todo:
        fn = todo.pop()
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn.fn)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                callee = fn.fn.__globals__.get(node.id)
                if isinstance(callee, JITFunction) and callee not in seen and callee is not fn:
                    seen.add(callee)
                    todo.append(callee)
    return seen


def never_launched(variants: list[Variant]) -> list[str]:
    """Jit functions no recorded launch compiles, neither as a kernel nor inside one."""
    launched = {v.kernel for v in variants}
    reached = set(launched)
    for kernel in launched:
        reached |= called_jit_functions(kernel)
    return sorted(f"{fn.fn.__module__}.{fn.fn.__qualname__}" for fn in jit_functions() if fn not in reached)


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, local-memory bytes per thread) of the one kernel in a cubin."""
    from triton import knobs
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(path)],
                             capture_output=True, text=True, check=True).stdout
    match = re.search(r"REG:(\d+).*?LOCAL:(\d+)", out)
    if match is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output:\n{out}")
    return int(match.group(1)), int(match.group(2))


def compile_variant(variant: Variant, target: GPUTarget) -> dict:
    """Compile for `target`; registers and spills (Triton's n_spills: local bytes / 4)."""
    source = ASTSource(variant.kernel, variant.signature, variant.constexprs, variant.attrs)
    compiled = triton.compile(source, target=target, options=variant.options.__dict__)
    regs, local_bytes = resource_usage(compiled.asm["cubin"])
    return {"n_regs": regs, "n_spills": local_bytes // 4, "local_bytes": local_bytes}


def build_table(scenes: list[Scene], archs=DEFAULT_ARCHS) -> tuple[list[dict], list[str]]:
    """One row per kernel variant (what launches it, its registers/spills for each arch), and the
    jit functions that no recorded launch compiles (see `never_launched`). Compiles in threads,
    as Triton's own asynchronous compile mode does (ptxas and the MLIR passes release the GIL)."""
    if any(isinstance(fn, InterpretedFunction) for fn in jit_functions()):
        raise RuntimeError("the kernels are interpreted (TRITON_INTERPRET=1): compiling them needs "
                           "TRITON_INTERPRET=0 before triton is first imported")
    rows: dict[tuple, dict] = {}
    jobs = []
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        variants = collect_variants(scenes, target)
        for variant in variants:
            row = rows.setdefault(variant.key(), {
                "kernel": variant.kernel.fn.__qualname__, "constexprs": variant.named_constexprs(),
                "signature": variant.signature, "num_warps": variant.options.num_warps,
                "divisible_by_16": variant.divisible_ints(), "scenes": sorted(variant.scenes),
                "calls": sorted(variant.calls), "targets": {}})
            jobs.append((row, variant, target))

    def compile_job(job):
        row, variant, target = job
        try:
            row["targets"][f"sm_{target.arch}"] = compile_variant(variant, target)
        except Exception as exc:   # the compiler's message names the kernel and the line
            raise RuntimeError(f"{row['kernel']} [{variant.named_constexprs()}, num_warps={row['num_warps']}, "
                               f"{'/'.join(row['scenes'])}] does not compile for sm_{target.arch}: {exc}") from exc

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(compile_job, jobs))
    return list(rows.values()), never_launched(variants)


def varying_arguments(rows: list[dict], row: dict) -> str:
    """The row's constexprs and argument types (with `%16=0` for integers specialised as
    multiples of 16) that differ between the variants of its kernel; the rest are the same in all."""
    def arguments(r: dict) -> dict:
        types = {name: ty + ("%16=0" if name in r["divisible_by_16"] else "")
                 for name, ty in r["signature"].items() if ty != "constexpr"}
        return {**r["constexprs"], **types}
    mine = arguments(row)
    others = [arguments(r) for r in rows if r["kernel"] == row["kernel"]]
    return " ".join(f"{name}={value}" for name, value in mine.items() if any(o.get(name) != value for o in others))


def format_table(rows: list[dict]) -> str:
    archs = sorted({t for row in rows for t in row["targets"]}, reverse=True)
    header = ["kernel", "varying arguments", "warps", "scenes", *(f"{a} regs/spills" for a in archs)]
    body = [[r["kernel"], varying_arguments(rows, r), str(r["num_warps"]), "/".join(r["scenes"]),
             *(f"{r['targets'][a]['n_regs']}/{r['targets'][a]['n_spills']}" for a in archs)] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body])


def parse_scene(text: str) -> Scene:
    name, _, numbers = text.partition("=")
    try:
        views, gaussians, side = (int(v) for v in numbers.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"scene must be NAME=VIEWS,GAUSSIANS,SIDE, got {text!r}") from None
    if not name or min(views, gaussians, side) < 1 or side % UNSHUFFLE:
        raise argparse.ArgumentTypeError(f"scene needs a name, positive sizes and a side divisible by "
                                         f"{UNSHUFFLE}: {text!r}")
    return Scene(name, views, gaussians, side)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ort3d.kernels.triton_targets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", type=parse_scene, action="append", required=True,
                        help="NAME=VIEWS,GAUSSIANS,SIDE, e.g. full=8,65536,512 (repeatable)")
    parser.add_argument("--arch", type=int, action="append",
                        help=f"CUDA compute capability ×10, repeatable (default {' '.join(map(str, DEFAULT_ARCHS))})")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    try:
        rows, missing = build_table(args.scene, tuple(args.arch or DEFAULT_ARCHS))
    except RuntimeError as exc:
        print(f"triton_targets: {exc}", file=sys.stderr)
        return 1
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"triton": triton.__version__, "rows": rows,
                                         "never_launched": missing}, indent=1, default=str))
    if missing:
        print(f"triton_targets: no recorded launch compiles {', '.join(missing)}: "
              "add the call that launches it to RENDER_CALLS", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
