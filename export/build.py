"""Build an artefact folder: ONNX graphs, optionally verified, TensorRT engines where
TensorRT is installed and, with the "aoti" format, AOTInductor packages (export/aoti_export.py),
recorded in one manifest (the programmatic core of ort3d-build).

Each network is exported, checked and (if asked) verified, then its engine is built, and the
manifest is rewritten after every network, so an interrupted build keeps what it finished. An
artefact is reused only through `cache.decide` (same key, same sha256 on disk).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ort3d.export import trt_build
from ort3d.export.aoti_export import (AOTI_NETWORK_NAMES, FEEDBACK, aoti_key, aoti_module,
                                      aoti_specs, compile_aoti)
from ort3d.export.cache import CacheDecision, artefact_sha256, decide, module_sha256
from ort3d.export.errors import ExportError
from ort3d.export.manifest import MANIFEST_NAME, new_manifest, read_manifest, write_manifest
from ort3d.export.onnx_export import OPSET, export_onnx
from ort3d.export.specs import NETWORK_NAMES, NetworkSpec, network_specs
from ort3d.export.verify import VerifyRow, verify_network
from ort3d.models.mv_unet import DEFAULT_TEMPORAL_CONTEXT
from ort3d.models.version import __version__

PRECISIONS = trt_build.ENGINE_PRECISIONS
FORMATS = ("onnx", "aoti")        # ONNX graphs (+ TensorRT engines), AOTInductor packages
TIMING_CACHE_DIR = "timing-caches"


@dataclass
class BuildOptions:
    precision: str = "fp16"
    onnx_only: bool = False
    verify: bool = False
    verify_seed: int = 0
    simplify_networks: tuple[str, ...] = NETWORK_NAMES    # onnxslim pass for these networks
    temporal_context: str = DEFAULT_TEMPORAL_CONTEXT
    networks: tuple[str, ...] = NETWORK_NAMES
    workspace_bytes: int = trt_build.DEFAULT_WORKSPACE_BYTES
    opset: int = OPSET
    formats: tuple[str, ...] = ("onnx",)

    def check(self) -> None:
        """Settings that cannot work -> ExportError (before any model is built)."""
        if self.precision not in PRECISIONS:
            raise ExportError(f"--precision: {self.precision!r} is not one of {PRECISIONS}")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ExportError(f"--formats: unknown format {bad[0] if bad else '(none)'!r}; "
                              f"choose from {','.join(FORMATS)}")
        names = AOTI_NETWORK_NAMES if "aoti" in self.formats else NETWORK_NAMES
        unknown = [n for n in self.networks if n not in names]
        if unknown or not self.networks:
            raise ExportError(f"--networks: unknown network {unknown[0] if unknown else '(none)'!r}; "
                              f"choose from {','.join(names)}")

    def wanted_networks(self) -> tuple[str, ...]:
        """The networks to build, in build order; with AOTInductor the full set includes the
        feedback stage (a package only: it has no ONNX graph)."""
        wanted = set(self.networks)
        if "aoti" in self.formats and wanted >= set(NETWORK_NAMES):
            wanted.add(FEEDBACK)
        return tuple(n for n in AOTI_NETWORK_NAMES if n in wanted)


@dataclass
class BuildReport:
    manifest_path: Path
    engines: bool                         # whether engines were (re)built or reused this run
    tensorrt_missing: str | None          # why not, when TensorRT is unavailable
    verify_rows: list[VerifyRow] = field(default_factory=list)
    decisions: dict[str, dict[str, CacheDecision]] = field(default_factory=dict)


def _previous_manifest(path: Path, log) -> dict | None:
    if not path.is_file():
        return None
    try:
        return read_manifest(path)
    except ExportError as err:   # a broken old manifest only means nothing can be reused
        log(f"note: ignoring the existing manifest, nothing will be reused: {err}")
        return None


def onnx_key(spec: NetworkSpec, module: torch.nn.Module, opset: int, simplify: bool,
             precision: str) -> dict:
    return {"weights_sha256": module_sha256(module), "shapes": spec.shapes(), "opset": opset,
            "precision": precision, "options": {**spec.options, "onnxslim": simplify},
            "torch_version": torch.__version__, "ort3d_version": __version__}


def engine_key(spec: NetworkSpec, onnx_sha256: str, flags: list[str], identity: dict) -> dict:
    return {"onnx_sha256": onnx_sha256, "shapes": spec.shapes(), "precision_flags": list(flags),
            "tensorrt_version": identity["tensorrt_version"], "gpu_name": identity["gpu_name"],
            "compute_capability": identity["compute_capability"], "ort3d_version": __version__}


def _still_fits(entry: dict, spec: NetworkSpec) -> bool:
    key = (entry["onnx"] or entry.get("aoti") or {}).get("key")
    if key is None:
        return False
    return (key["ort3d_version"], key["shapes"], entry["options"]) == (
        __version__, spec.shapes(), dict(spec.options))


def _carried_engine(previous: dict | None, onnx_sha256: str, spec: NetworkSpec) -> dict | None:
    """Without TensorRT here, keep a previously built engine only if it was built from this
    very graph (its identity fields are checked by whoever loads it)."""
    if previous is None:
        return None
    key = previous["key"]
    same = (key["onnx_sha256"], key["shapes"], key["ort3d_version"])
    return previous if same == (onnx_sha256, spec.shapes(), __version__) else None


def build_artefacts(models, out_dir: str | Path, options: BuildOptions | None = None,
                    log: Callable[[str], None] = print, identity: dict | None = None,
                    engine_builder: Callable | None = None) -> BuildReport:
    """models: ort3d.models.checkpoint.Models (.mv, .lgm, .vae, .image_encoder, .preset, .schedule).

    identity / engine_builder default to this host's TensorRT and `trt_build.build_engine`;
    tests pass their own to exercise the cache without a GPU."""
    options = options or BuildOptions()
    options.check()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    previous = _previous_manifest(manifest_path, log)
    previous_nets = previous["networks"] if previous else {}

    missing = None
    onnx_only = options.onnx_only or "onnx" not in options.formats
    if not onnx_only and engine_builder is None:
        missing = trt_build.tensorrt_missing_reason()
        if missing:
            log(f"TensorRT unavailable: {missing}; writing fp32 ONNX graphs only "
                "(build engines later on a GPU host with TensorRT 10.12 or newer)")
    build_engines = not onnx_only and missing is None
    if build_engines:
        identity = identity or trt_build.host_identity()
        engine_builder = engine_builder or trt_build.build_engine

    specs = network_specs(models.preset, temporal_context=options.temporal_context)
    specs = aoti_specs(specs, models.preset) if "aoti" in options.formats else specs
    aoti_device = next(models.mv.parameters()).device.type
    schedule = dataclasses.asdict(models.schedule)
    manifest = new_manifest(models.preset.name, options.precision, schedule)
    # Networks outside a --networks subset keep their entries, if they still fit this set.
    manifest["networks"] = {k: v for k, v in previous_nets.items()
                            if k in specs and k not in options.wanted_networks()
                            and _still_fits(v, specs[k]) and previous["schedule"] == schedule}
    report = BuildReport(manifest_path, build_engines, missing)
    total = len(options.wanted_networks())
    for index, name in enumerate(options.wanted_networks()):
        spec, old = specs[name], previous_nets.get(name, {})
        tag = f"[{index + 1}/{total}] {name:<13}"
        module = aoti_module(spec, models).eval()
        entry, decisions = {**spec.io_table(), "options": dict(spec.options)}, {}
        if "aoti" in options.formats:
            entry["aoti"], decisions["aoti"] = _aoti(spec, module, out_dir, old.get("aoti"),
                                                     aoti_device, tag, log)
        if "onnx" not in options.formats or name == FEEDBACK:
            report.decisions[name] = decisions
            manifest["networks"][name] = {**entry, "onnx": None, "engine": None}
            write_manifest(manifest_path, manifest)
            continue
        # A graph in the precision of its consumer: the engine built from it in this run (a
        # strongly typed network takes its types from the graph), else ONNX Runtime's fp32.
        precision = (trt_build.engine_precision(spec, options.precision)[0] if build_engines
                     else "fp32")
        onnx_entry, decisions["onnx"] = _onnx(spec, module, out_dir, old.get("onnx"), options,
                                              precision, tag, log)
        if options.verify:
            started = time.perf_counter()
            rows = verify_network(spec, module, out_dir / onnx_entry["file"], options.verify_seed,
                                  precision=precision)
            report.verify_rows.extend(rows)
            worst = max(r.relative_error for r in rows)
            verdict = "ok" if all(r.passed for r in rows) else "FAIL"
            log(f"{tag} verify: worst relative error {worst:.2e} ({verdict}, "
                f"{time.perf_counter() - started:.1f} s)")
        if build_engines:
            engine, decisions["engine"] = _engine(spec, onnx_entry, out_dir, old.get("engine"),
                                                  options, identity, engine_builder, tag, log)
        else:
            engine = _carried_engine(old.get("engine"), onnx_entry["sha256"], spec)
        report.decisions[name] = decisions
        manifest["networks"][name] = {**entry, "onnx": onnx_entry, "engine": engine}
        write_manifest(manifest_path, manifest)
        del module
    log(f"manifest: {manifest_path}")
    return report


def _onnx(spec, module, out_dir, previous, options, precision, tag, log):
    simplify = spec.name in options.simplify_networks
    key = onnx_key(spec, module, options.opset, simplify, precision)
    decision = decide(previous, key, out_dir)
    if decision.reuse:
        log(f"{tag} onnx: reused ({decision.reason})")
        return previous, decision
    log(f"{tag} onnx: exporting ({decision.reason}) ...")
    artefact = export_onnx(spec, module, out_dir, opset=options.opset, simplify=simplify,
                           precision=precision)
    log(f"{tag} onnx: {artefact.file}, {artefact.nodes} nodes, {artefact.seconds:.1f} s")
    entry = {"file": artefact.file, "external_data": artefact.external_data,
             "sha256": artefact.sha256, "opset": artefact.opset, "precision": artefact.precision,
             "key": key}
    return entry, decision


def _aoti(spec, module, out_dir, previous, device, tag, log):
    key = aoti_key(spec, module, device)
    decision = decide(previous, key, out_dir)
    if decision.reuse:
        log(f"{tag} aoti: reused ({decision.reason})")
        return previous, decision
    log(f"{tag} aoti: compiling for {device} ({decision.reason}) ...")
    artefact = compile_aoti(spec, module, out_dir, device)
    log(f"{tag} aoti: {artefact.file} in {artefact.seconds:.1f} s")
    return {"file": artefact.file, "sha256": artefact.sha256, "key": key}, decision


def _engine(spec, onnx_entry, out_dir, previous, options, identity, builder, tag, log):
    precision, flags = trt_build.engine_precision(spec, options.precision)
    key = engine_key(spec, onnx_entry["sha256"], flags, identity)
    decision = decide(previous, key, out_dir)
    if decision.reuse:
        log(f"{tag} engine: reused ({decision.reason})")
        return previous, decision
    note = f", {precision} instead of {options.precision}" if precision != options.precision else ""
    log(f"{tag} engine: building {precision}{note} ({decision.reason}) ...")
    started = time.perf_counter()
    engine_file = f"{spec.name}.plan"
    cache = trt_build.timing_cache_path(out_dir / TIMING_CACHE_DIR, identity)
    builder(out_dir / onnx_entry["file"], spec, flags, out_dir / engine_file, cache,
            options.workspace_bytes)
    entry = {"file": engine_file, "sha256": artefact_sha256(out_dir, [engine_file]),
             "precision": precision, "key": key}
    log(f"{tag} engine: {engine_file} in {time.perf_counter() - started:.1f} s")
    return entry, decision
