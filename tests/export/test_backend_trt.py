"""The `trt` backend on a GPU host with TensorRT: tiny engines built from the tiny graphs, run
through the same interface and compared with ONNX Runtime. Skips (with the reason) elsewhere."""

import pytest
import torch

from ort3d.export.build import BuildOptions, build_artefacts
from ort3d.export.specs import NETWORK_NAMES, network_specs
from ort3d.export.trt_build import tensorrt_missing_reason
from ort3d.export.verify import FP16_RELATIVE_TOLERANCE, FP32_RELATIVE_TOLERANCE, compare
from ort3d.models.presets import TINY

MISSING = tensorrt_missing_reason()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"needs TensorRT: {MISSING}")


# fp32 engines (TF32 off): kernel choice only, well inside the 1e-4 fp32 bar. fp16 engines run
# the fp16 graphs ONNX Runtime runs too, TensorRT in fp16 kernels and ONNX Runtime's CPU provider
# partly in fp32 (fp16 ops without a CPU kernel): the fp16 verify bar.
@pytest.mark.parametrize("precision, tolerance", [("fp32", FP32_RELATIVE_TOLERANCE),
                                                  ("fp16", FP16_RELATIVE_TOLERANCE)])
def test_engines_match_onnx_runtime_on_their_graphs(precision, tolerance, tiny_models, artefact_copy):
    from ort3d.runtime.backend_ort import OrtNetworks
    from ort3d.runtime.backend_trt import TrtNetworks

    build_artefacts(tiny_models, artefact_copy, BuildOptions(precision=precision), log=lambda m: None)
    trt_nets, ort_nets = TrtNetworks(artefact_copy), OrtNetworks(artefact_copy)
    for name in NETWORK_NAMES:
        inputs = network_specs(TINY)[name].sample_inputs(5)
        expected = ort_nets.run(name, **inputs)
        got = trt_nets.run(name, **{k: v.cuda() for k, v in inputs.items()})
        torch.cuda.synchronize()
        for row in compare(name, {k: v.cpu() for k, v in got.items()}, expected, tolerance):
            assert row.passed, row
