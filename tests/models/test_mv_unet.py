"""MVModel.forward semantics on the tiny preset (docs/inference.md#mvmodel), quirks Q1, Q3, Q18.

Tolerances: the tiny fp32 model's own output moves by ~1.1e-6 (relative) when only the CPU
thread count changes, so fp32 comparisons of differently-shaped but equivalent computations use
3e-6; exactness claims are checked in float64 (1e-12) or bit for bit where the ops are the same.
"""

import copy

import pytest
import torch

from mv_helpers import adapter_features
from ort3d.models.cameras import load_feedback_cameras
from ort3d.models.mv_unet import TEMPORAL_CONTEXTS, MVModel, temporal_context_index
from ort3d.models.presets import TINY
from ort3d.models.weights import init_deterministic

B, F, S = 2, TINY.num_views, TINY.latent_size
C = TINY.unet["block_out_channels"]
FP32_NOISE = 3e-6     # see the module docstring


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def model():
    return init_deterministic(MVModel.from_preset(TINY), TINY.seed, "mv").eval()


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    cams = load_feedback_cameras()
    dim = TINY.unet["cross_attention_dim"]
    return dict(
        sample=torch.randn(B, F, 8, S, S, generator=gen),
        timestep=torch.tensor(0.6866568922996521),
        # CFG: unconditional half has a zero context, the conditional one an image embedding.
        context=torch.cat([torch.zeros(1, 1, dim), torch.randn(1, 1, dim, generator=gen)]),
        added_time_ids=torch.tensor([[6.0, 127.0, 0.02]] * B),
        intrinsics=cams.intrinsics,
        c2w=cams.c2w,
        rgb=torch.rand(F, 3, TINY.image_size, TINY.image_size, generator=gen),
        ccm=torch.rand(F, 3, TINY.image_size, TINY.image_size, generator=gen),
    )


def args(inputs, dtype=torch.float32):
    return (inputs["sample"].to(dtype), inputs["timestep"], inputs["context"].to(dtype),
            inputs["added_time_ids"].to(dtype))


def per_call(model, inputs, temporal_context="interleaved", dtype=torch.float32):
    """As the authors call it: CFG-doubled cameras and feedback maps."""
    cameras = {"intrinsics": inputs["intrinsics"].to(dtype).expand(B, -1, -1, -1),
               "extrinsics": inputs["c2w"].to(dtype).expand(B, -1, -1, -1)}
    cond = [inputs[k].to(dtype).expand(B, -1, -1, -1, -1) for k in ("rgb", "ccm")]
    return model(*args(inputs, dtype), cond=cond, cameras=cameras, temporal_context=temporal_context)


def hoisted(model, inputs, temporal_context="interleaved", dtype=torch.float32):
    """As the runtime calls it: constants computed once, adapters run once for B = 1."""
    plucker = model.plucker_embeddings(inputs["intrinsics"].to(dtype), inputs["c2w"].to(dtype), S)
    features = adapter_features(model, inputs["rgb"].to(dtype), inputs["ccm"].to(dtype))
    context = model.context_constants(inputs["context"].to(dtype), temporal_context)
    return model(*args(inputs, dtype), adapter_features=features, plucker=plucker, context=context,
                 temporal_context=temporal_context)


def zero_plucker(model):
    levels = [*model.down_plucker, model.mid_plucker, *model.up_plucker]
    sizes = [S, S // 2, S // 4, S // 8, S // 8, S // 8, S // 4, S // 2, S]
    return [torch.zeros(F, mlp.embed[2].out_features, r, r) for mlp, r in zip(levels, sizes)]


@torch.no_grad()
def test_block_driver_equals_diffusers_forward(model, inputs):
    """With zero Plücker terms and no adapters MVModel is the stock SVD UNet (diffusers >= 0.28,
    whose temporal context is per CFG half)."""
    ours = model(*args(inputs), plucker=zero_plucker(model), temporal_context="per-half")
    stock = model.unet(*args(inputs)).sample
    assert ours.shape == (B, F, 4, S, S)
    assert rel(ours, stock) <= 1e-6   # same ops in the same order (bit-identical here)


@torch.no_grad()
@pytest.mark.parametrize("temporal_context", TEMPORAL_CONTEXTS)
def test_hoisted_constants_equal_per_call_path(model, inputs, temporal_context):
    exact64 = copy.deepcopy(model).double()
    ref64 = per_call(exact64, inputs, temporal_context, torch.float64)
    assert rel(hoisted(exact64, inputs, temporal_context, torch.float64), ref64) <= 1e-12   # an identity
    ref32 = per_call(model, inputs, temporal_context)
    assert rel(hoisted(model, inputs, temporal_context), ref32) <= FP32_NOISE   # 1-row vs many-row matmul rounding
    assert rel(ref32, ref64.float()) <= FP32_NOISE


def test_temporal_context_index():
    # 2 batches x 4 positions: per-half = own batch; interleaved (diffusers 0.25) = position parity (Q1).
    assert temporal_context_index(2, 4, "per-half").tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert temporal_context_index(2, 4, "interleaved").tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="temporal_context must be one of interleaved, per-half"):
        temporal_context_index(2, 4, "fixed")


@torch.no_grad()
def test_temporal_context_changes_output_only_with_distinct_contexts(model, inputs):
    plucker = zero_plucker(model)
    default = model(*args(inputs), plucker=plucker)
    assert torch.equal(default, model(*args(inputs), plucker=plucker, temporal_context="interleaved"))
    per_half = model(*args(inputs), plucker=plucker, temporal_context="per-half")
    assert rel(per_half, default) > 0.05            # ~0.2 on a tiny model (docs/quirks.md#q1)

    sample, t, context, ids = args(inputs)
    one = (sample[1:], t, context[1:], ids[1:])
    assert torch.equal(model(*one, plucker=plucker, temporal_context="per-half"), model(*one, plucker=plucker))
    same = context[1:].expand(B, -1, -1)
    assert torch.equal(model(sample, t, same, ids, plucker=plucker, temporal_context="per-half"),
                       model(sample, t, same, ids, plucker=plucker))


class Capture:
    """Forward (pre-)hook recorder: `inputs[name]` is the first positional input, `outputs[name]` the output."""

    def __init__(self):
        self.inputs, self.outputs, self.handles = {}, {}, []

    def input_of(self, module, name):
        self.handles.append(module.register_forward_pre_hook(
            lambda m, a: self.inputs.__setitem__(name, a[0].clone())))

    def output_of(self, module, name):
        self.handles.append(module.register_forward_hook(
            lambda m, a, out: self.outputs.__setitem__(name, out.clone())))

    def close(self):
        for handle in self.handles:
            handle.remove()


def plus(h, term):
    """h [B·F,...] + a per-frame term shared by the batch, as the model adds it."""
    return (h.unflatten(0, (B, F)) + term).flatten(0, 1)


@torch.no_grad()
def test_q3_skips_carry_the_plucker_term(model, inputs):
    unet = model.unet
    plucker = model.plucker_embeddings(inputs["intrinsics"], inputs["c2w"], S)
    cap = Capture()
    cap.output_of(unet.conv_in, "skip0 before")
    cap.input_of(unet.up_blocks[3].resnets[2], "uses skip0")
    cap.output_of(unet.down_blocks[0].downsamplers[0], "skip3 before")
    cap.input_of(unet.up_blocks[2].resnets[2], "uses skip3")
    cap.output_of(unet.down_blocks[3].resnets[1], "skip11 before")
    cap.input_of(unet.up_blocks[0].resnets[0], "uses skip11")
    try:
        model(*args(inputs), plucker=plucker)
    finally:
        cap.close()
    # (stored tensor, Plücker term added in place in the reference, channels of the skip)
    cases = [("skip0", plucker[0], C[0]), ("skip3", plucker[1], C[0]), ("skip11", plucker[4], C[3])]
    for name, term, channels in cases:
        before = cap.outputs[f"{name} before"]
        used = cap.inputs[f"uses {name}"][:, -channels:]
        assert torch.equal(used, plus(before, term)), name
        assert (used - before).abs().max() > 0.1, name   # a skip without the term would differ


@torch.no_grad()
def test_adapter_features_after_layers_before_downsampler_and_after_mid(model, inputs):
    unet = model.unet
    plucker = model.plucker_embeddings(inputs["intrinsics"], inputs["c2w"], S)
    features = adapter_features(model, inputs["rgb"], inputs["ccm"])
    cap = Capture()
    # Last layer skip of down blocks 0, 1, 2 is consumed by the first resnet of up blocks 3, 2, 1.
    for i in range(3):
        cap.input_of(unet.down_blocks[i].downsamplers[0], f"down{i}")
        cap.input_of(unet.up_blocks[3 - i].resnets[0], f"layer skip {i}")
    cap.output_of(unet.mid_block.resnets[-1], "mid")
    cap.input_of(unet.up_blocks[0].resnets[0], "up0")
    try:
        model(*args(inputs), adapter_features=features, plucker=plucker)
    finally:
        cap.close()
    rgb, ccm = features
    for i in range(3):
        layer_skip = cap.inputs[f"layer skip {i}"][:, -C[i]:]
        assert torch.equal(cap.inputs[f"down{i}"], plus(plus(layer_skip, rgb[i]), ccm[i]))
        assert (cap.inputs[f"down{i}"] - layer_skip).abs().max() > 0.1   # the skip has no features
    up0 = cap.inputs["up0"][:, :C[3]]
    assert torch.equal(up0, plus(plus(plus(cap.outputs["mid"], rgb[3]), ccm[3]), plucker[5]))


@torch.no_grad()
def test_adapters_once_equal_adapters_on_cfg_doubled_batch(model, inputs):
    once = adapter_features(model, inputs["rgb"], inputs["ccm"])
    doubled = adapter_features(model, torch.cat([inputs["rgb"]] * B), torch.cat([inputs["ccm"]] * B))
    for level_once, level_doubled in zip(once[0] + once[1], doubled[0] + doubled[1]):
        for half in level_doubled.unflatten(0, (B, F)):
            assert rel(half, level_once) <= 1e-6   # convolution of a different batch size
    plucker = model.plucker_embeddings(inputs["intrinsics"], inputs["c2w"], S)
    cond = [inputs[k].expand(B, -1, -1, -1, -1) for k in ("rgb", "ccm")]
    per_half = model(*args(inputs), cond=cond, plucker=plucker)
    shared = model(*args(inputs), adapter_features=once, plucker=plucker)
    assert rel(shared, per_half) <= FP32_NOISE


class _Stop(Exception):
    pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_q18_timestep_cast_to_sample_dtype(model, inputs, dtype):
    """The authors round t to the sample dtype before the sinusoidal projection (stock diffusers
    feeds the float64 / original tensor). Stop at the projection: no half-precision UNet on CPU."""
    seen = {}

    def record(module, a):
        seen["t"] = a[0]
        raise _Stop

    handle = model.unet.time_proj.register_forward_pre_hook(record)
    t = 0.6866568922996521
    try:
        with pytest.raises(_Stop):
            model(inputs["sample"].to(dtype), t, inputs["context"], inputs["added_time_ids"],
                  plucker=zero_plucker(model))
    finally:
        handle.remove()
    assert seen["t"].dtype == dtype and seen["t"].shape == (B,)
    assert torch.equal(seen["t"], torch.tensor([t, t], dtype=torch.float64).to(dtype))
    if dtype == torch.float16:
        assert abs(seen["t"][0].item() - t) > 1e-4   # fp16 rounding is visible


def test_argument_errors(model, inputs):
    with pytest.raises(ValueError, match="exactly one of cameras= or plucker="):
        model(*args(inputs))
    context = model.context_constants(inputs["context"], temporal_context="per-half")
    with pytest.raises(ValueError, match="temporal_context=per-half"):
        model(*args(inputs), plucker=zero_plucker(model), context=context)
    with pytest.raises(ValueError, match=r"\[B,1,D\]"):
        model.context_constants(inputs["context"].expand(-1, 2, -1))
