"""Content-keyed reuse of built artefacts (ONNX graphs and TensorRT engines).

An artefact is reused only when the key recorded for it in the manifest equals the key the build
would use now, AND the file on disk still has the sha256 the manifest recorded. A file that merely
exists is never reused: a stale engine from another GPU or TensorRT version deserialises into
garbage or crashes, so "file present" says nothing about "file valid".
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

# The fields that determine a TensorRT engine (docs/manifest.md#engine-entry).
ENGINE_KEY_FIELDS = ("onnx_sha256", "shapes", "precision_flags", "tensorrt_version", "gpu_name",
                     "compute_capability", "ort3d_version")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def module_sha256(module) -> str:
    """Digest of every parameter and buffer of a module (names, dtypes, shapes, bytes): what an
    exported graph's weights are, whatever checkpoint file or seed they came from."""
    import torch

    digest = hashlib.sha256()
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else b"")
    return digest.hexdigest()


def artefact_sha256(directory: str | os.PathLike, files: list[str]) -> str:
    """Digest of an artefact made of several files (an ONNX graph plus its external weights):
    the sha256 of the file itself when there is one file, else of the lines 'name sha256'."""
    directory = Path(directory)
    if len(files) == 1:
        return sha256_file(directory / files[0])
    lines = "".join(f"{name} {sha256_file(directory / name)}\n" for name in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def entry_files(entry: dict) -> list[str]:
    """The files of a manifest entry: its `file` then its `external_data` (if any)."""
    return [entry["file"], *entry.get("external_data", [])]


def key_differences(old: dict, new: dict) -> list[str]:
    """'field: old -> new' for every field whose value differs (fields of either key)."""
    diffs = []
    for name in list(old) + [k for k in new if k not in old]:
        if old.get(name) != new.get(name):
            diffs.append(f"{name}: {_short(old.get(name))} -> {_short(new.get(name))}")
    return diffs


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class CacheDecision:
    reuse: bool
    reason: str          # one line: why it is reused or (re)built


def decide(previous: dict | None, key: dict, directory: Path) -> CacheDecision:
    """previous: the manifest entry {"file", "sha256", "key", ...} of the last build, or None."""
    if previous is None:
        return CacheDecision(False, "no previous build recorded in the manifest")
    diffs = key_differences(previous.get("key", {}), key)
    if diffs:
        return CacheDecision(False, "key changed: " + "; ".join(diffs))
    files = entry_files(previous)
    missing = [name for name in files if not (Path(directory) / name).is_file()]
    if missing:
        return CacheDecision(False, f"{missing[0]} is missing")
    if artefact_sha256(directory, files) != previous.get("sha256"):
        return CacheDecision(False, f"{files[0]} changed on disk (sha256 differs from the manifest)")
    return CacheDecision(True, "key unchanged, file verified by sha256")
