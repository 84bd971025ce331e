"""Where the exported backends (ort, trt, aoti) find their artefacts when no --engines is given.

`--engines DIR` always wins and is used as it is. Without it, each (preset, weights source,
Q1 mode, backend formats, device type, ort3d version) gets its own folder under the user cache,
`$XDG_CACHE_HOME/ort3d/engines/<preset>-<id>` (default `~/.cache/...`), and the first run builds
what is missing there with the same builder as `ort3d-build`. Reuse inside the folder is decided by
the manifest's content keys (weights sha256, shapes, options, versions: docs/manifest.md), not by
the folder's name, so changed weights behind the same path are rebuilt, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ort3d.models.version import __version__

ENGINE_CACHE_ENV = "ORT3D_ENGINE_CACHE"   # overrides the cache root (tests, shared machines)


def cache_root() -> Path:
    if os.environ.get(ENGINE_CACHE_ENV):
        return Path(os.environ[ENGINE_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ort3d" / "engines"


def default_folder(request, formats: tuple[str, ...]) -> Path:
    """The per-user folder for this request's weights and options."""
    source = {"preset": request.preset.name, "ort3d": __version__,
              "checkpoint": _source_id(request.checkpoint), "svd": _source_id(request.svd),
              "temporal_context": request.temporal_context, "formats": sorted(formats),
              "device": request.device.type}
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / f"{request.preset.name}-{digest}"


def _source_id(value: str | None) -> str | None:
    """A local folder by its absolute path; a hub id (or None) as given."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def engine_folder(request, formats: tuple[str, ...]) -> Path:
    """The artefact folder for an exported backend: --engines as given, or the cached default
    brought up to date (built on first use, with progress lines on stderr)."""
    if request.engines is not None:
        return request.engines
    from ort3d.export.build import BuildOptions, build_artefacts

    folder = default_folder(request, formats)
    log = request.log or (lambda line: print(f"ort3d: {line}", file=sys.stderr, flush=True))
    log(f"engines for {request.preset.name} ({', '.join(formats)}) in {folder}; missing ones are "
        "built now (first use only)")
    options = BuildOptions(onnx_only="engine" not in formats,
                           formats=("aoti",) if "aoti" in formats else ("onnx",),
                           temporal_context=request.temporal_context)
    # Graphs are exported from fp32 weights whatever --dtype says (docs/precision.md): prebuilt
    # models are reused only when they are fp32.
    given = request.models
    models = (given if given is not None and _is_fp32(given)
              else replace(request, models=None, dtype="fp32").weights())
    build_artefacts(models, folder, options, log=log)
    return folder


def _is_fp32(models) -> bool:
    return all(p.dtype == torch.float32 for p in models.mv.parameters())
