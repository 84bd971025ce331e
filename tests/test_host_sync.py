"""tests/host_sync.py catches every way code reads a device value on the host, and nothing else."""

import pytest
import torch

from host_sync import HostReadError, NoHostReads

x = torch.rand(4)


@pytest.mark.parametrize("read", [
    lambda: x.sum().item(),
    lambda: int(x[0] * 3),
    lambda: bool(x[0] > 0),
    lambda: x[x > 0.5],                                   # boolean mask: nonzero inside
    lambda: x.nonzero(),
    lambda: torch.repeat_interleave(x, torch.tensor([1, 2, 1, 0])),
    lambda: x.tolist(),
    lambda: x.numpy(),
    lambda: torch.equal(x, x),
], ids=["item", "int", "bool", "mask", "nonzero", "repeat_interleave", "tolist", "numpy", "equal"])
def test_host_reads_are_refused(read):
    with pytest.raises(HostReadError):
        with NoHostReads():
            read()


def test_device_side_work_passes_and_is_recorded():
    with NoHostReads() as mode:
        y = torch.where(x > 0.5, x, 0.0).cumsum(0)
        y[torch.tensor([0, 2])] = 1.0                     # integer indices: no host read
    assert "aten::cumsum" in mode.ops and "aten::index_put_" in mode.ops
    assert x.tolist()                                     # methods restored on exit
