"""Record the aten ops a piece of code dispatches and fail on those that read device values on the
host (a sync on CUDA, and what a CUDA-graph capture cannot hold).

Works on any device: on the CPU nothing syncs, but the same ops are dispatched, so a CPU test
catches what would sync on a GPU. Python-level reads that dispatch no op on CPU tensors
(`tolist`, `numpy`) are refused by patching those two Tensor methods while active.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops whose result size or value the host must know: each syncs on CUDA.
HOST_READ_OPS = frozenset({
    "aten::_local_scalar_dense",      # item(), int(), float(), bool() of a tensor
    "aten::is_nonzero",
    "aten::equal",
    "aten::nonzero", "aten::nonzero_static", "aten::argwhere",
    "aten::masked_select",
    "aten::unique_dim", "aten::_unique", "aten::_unique2", "aten::unique_consecutive",
    "aten::bincount", "aten::histc",
    "aten::_assert_async",
})
HOST_READ_METHODS = ("tolist", "numpy")


class HostReadError(AssertionError):
    pass


def _reads_host(func, args, kwargs) -> bool:
    name = func._schema.name
    if name in HOST_READ_OPS:
        return True
    if name == "aten::repeat_interleave" and func._overloadname == "Tensor":
        return True                   # repeats as a tensor: the output size is read back
    if name in ("aten::index", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_"):
        indices = args[1] if len(args) > 1 else ()
        return any(i is not None and i.dtype == torch.bool for i in indices)   # boolean masks
    if name == "aten::_to_copy":                                   # .cpu(), .to("cpu")
        target = kwargs.get("device")
        return target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu"
    if name == "aten::copy_":                                      # cpu_tensor.copy_(device_tensor)
        return args[0].device.type == "cpu" and args[1].device.type != "cpu"
    return False


class NoHostReads(TorchDispatchMode):
    """Raises HostReadError at the first op that reads a device value on the host; `ops` lists
    every op name dispatched (so a test can also check that the code under test ran)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self._saved = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append(func._schema.name)
        if _reads_host(func, args, kwargs):
            raise HostReadError(f"host read: {func} inside code that must not read device values")
        return func(*args, **kwargs)

    def __enter__(self):
        for name in HOST_READ_METHODS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, _refuse(name))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, method)
        return super().__exit__(*exc)

    @contextlib.contextmanager
    def paused(self):
        """Code run here is not checked (Triton's CPU interpreter copies tensors to numpy itself,
        which a GPU launch never does)."""
        self.__exit__(None, None, None)
        try:
            yield
        finally:
            self.__enter__()


def _refuse(name):
    def method(self, *args, **kwargs):
        raise HostReadError(f"host read Tensor.{name} inside code that must not read device values")
    return method


class UncheckedLaunch:
    """A Triton kernel whose launches run with the checks paused (see NoHostReads.paused)."""

    def __init__(self, kernel, mode: NoHostReads):
        self.kernel, self.mode = kernel, mode

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with self.mode.paused():
                return self.kernel[grid](*args, **kwargs)
        return launch
