"""Reading weight files and loading them into modules, with one-line errors that name the file.

Big modules are built with their parameters on the meta device (`params_on_meta`) and receive
the file's tensors by `load_state_dict(assign=True)`, so a full-size network is never allocated
twice (once randomly initialised, once loaded).
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

STATE_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_SHOWN = 3   # offending keys quoted per category in an error message


class CheckpointError(Exception):
    """A checkpoint file or folder that cannot be used; the one-line message names the file."""


def first_sentence(error: BaseException) -> str:
    """'Type: first sentence' of an exception, short enough for a one-line message."""
    text = str(error).strip().split("\n")[0].split(". ")[0][:160]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _read(path: Path):
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    # Memory-map zip-format files (torch.save's default) so a 3.5 GB file is not read up front;
    # the legacy format cannot be mapped.
    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def _as_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return dict(obj)
    # Training wrappers nest the weights; accept that only when exactly one candidate exists and
    # nothing else in the file is a tensor.
    nested = [k for k in ("state_dict", "module") if isinstance(obj.get(k), Mapping)]
    if len(nested) == 1 and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = obj[nested[0]]
        if inner and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in inner.items()):
            return dict(inner)
    if not obj:
        raise CheckpointError(f"{path}: the state dict is empty")
    bad = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    hint = f" (nested weights under {nested} are ambiguous)" if nested else ""
    raise CheckpointError(f"{path}: not a dict of tensors: entry {bad!r} is a "
                          f"{type(obj[bad]).__name__}{hint}")


def load_state_file(path) -> dict[str, torch.Tensor]:
    """.pth/.pt/.bin (torch.load, weights_only) or .safetensors -> {key: CPU tensor}."""
    path = Path(path)
    if path.suffix.lower() not in STATE_FILE_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported weight file type {path.suffix!r} "
                              f"(expected one of {', '.join(STATE_FILE_SUFFIXES)})")
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes)")
    try:
        obj = _read(path)
    except Exception as error:  # torch/safetensors raise many types for damaged files
        raise CheckpointError(f"{path}: cannot read weights, the file is truncated, corrupt or not a "
                              f"checkpoint ({first_sentence(error)})") from error
    return _as_state_dict(obj, path)


def expected_shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


def check_state_dict(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor], path) -> None:
    """Strict key and shape match; the error gives counts and the first few offending keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first: {', '.join(missing[:_SHOWN])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:_SHOWN])})")
    if wrong:
        shown = ", ".join(f"{k} {list(state[k].shape)} vs model {list(expected[k])}" for k in wrong[:_SHOWN])
        problems.append(f"{len(wrong)} with wrong shape (first: {shown})")
    if problems:
        raise CheckpointError(f"{path}: weights do not match the model: {'; '.join(problems)}")


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], path,
                 device="cpu", dtype=torch.float32) -> nn.Module:
    """Check `state` against `module`, then install it (floating tensors cast to `dtype`).

    Non-persistent buffers (not in checkpoints) keep their dtype and only move to `device`.
    """
    check_state_dict(expected_shapes(module), state, path)
    cast = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
            for k, v in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    return module.to(device).eval().requires_grad_(False)


@contextlib.contextmanager
def params_on_meta():
    """Modules constructed inside get their parameters on the meta device (no memory, no init
    cost) while buffers stay real: non-persistent buffers such as CLIP's position ids are not in
    any checkpoint and must be computed at construction. Patches nn.Module.register_parameter for
    the duration (like accelerate's init_empty_weights); not thread-safe."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register
