"""Loading real checkpoint folders (tiny stand-ins written here) and every way a file can be bad."""

import json
import shutil
import socket

import pytest
import torch
from safetensors.torch import save_file

from checkpoint_files import MEAN, STD, tiny_file_states, write_weight_folders
from ort3d.models.checkpoint import CheckpointError, build_models, check_state_dict, load_state_file
from ort3d.models.clip import CLIP_MEAN
from ort3d.models.presets import TINY
from ort3d.models.weights import deterministic_tensor


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Loading must never reach the hub: offline mode, and any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import huggingface_hub
    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, refuse)
        monkeypatch.setattr(huggingface_hub.file_download, name, refuse, raising=False)
        monkeypatch.setattr(huggingface_hub._snapshot_download, name, refuse, raising=False)


@pytest.fixture(scope="module")
def file_states():
    return tiny_file_states()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, file_states):
    return write_weight_folders(tmp_path_factory.mktemp("weights"), file_states)


def copy_folders(folders, tmp_path):
    ckpt, svd = (shutil.copytree(f, tmp_path / f.name) for f in folders)
    return ckpt, svd


def assert_same_weights(module, state, dtype=torch.float32):
    loaded = module.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == dtype, key
        assert torch.equal(loaded[key], value.to(dtype)), key


def test_real_folders_load_exact_weights(folders, file_states):
    models = build_models(TINY.replace(seed=0), *folders)
    assert_same_weights(models.mv, file_states["mv"])
    assert_same_weights(models.lgm, file_states["lgm"])
    # fp16 variant on disk -> the fp16-rounded values, held in float32
    assert_same_weights(models.vae, {k: v.half() for k, v in file_states["vae"].state_dict().items()})
    assert_same_weights(models.image_encoder.clip, file_states["clip"].state_dict())
    assert models.image_encoder.mean.flatten().tolist() == pytest.approx(MEAN)
    assert models.image_encoder.std.flatten().tolist() == pytest.approx(STD)
    assert models.schedule.sigma_max == 700.0 and models.schedule.timestep_spacing == "leading"
    assert models.sources["vae"].endswith("diffusion_pytorch_model.fp16.safetensors")
    assert models.sources["mv"].endswith("mv_model_unet.pth")
    # hyper-parameters come from the configs and the tensor shapes
    assert models.preset.unet["block_out_channels"] == TINY.unet["block_out_channels"]
    assert "not_an_argument" not in models.preset.unet
    assert models.preset.adapter_channels == TINY.adapter_channels and models.preset.lgm == TINY.lgm
    assert models.preset.clip["image_size"] == TINY.clip["image_size"]
    assert not any(t.is_meta for m in (models.mv, models.lgm, models.vae, models.image_encoder)
                   for t in (*m.parameters(), *m.buffers()))


def test_random_weights_without_folders_come_from_the_preset_seed():
    models = build_models(TINY.replace(seed=5), dtype=torch.bfloat16)
    assert models.sources["mv"] == "random weights (seed 5)"
    for name, module in (("mv", models.mv), ("lgm", models.lgm), ("vae", models.vae),
                         ("clip", models.image_encoder.clip)):
        for key, value in list(module.state_dict().items())[:3]:
            expected = deterministic_tensor(5, name, key, value.shape).to(torch.bfloat16)
            assert torch.equal(value, expected), key
    # non-persistent buffers keep their dtype; the encoder still runs on a float32 image
    encoder = models.image_encoder
    assert encoder.mean.dtype == torch.float32 and encoder.mean.flatten().tolist() == pytest.approx(CLIP_MEAN)
    with torch.no_grad():
        assert encoder(torch.zeros(1, 3, 128, 128)).dtype == torch.bfloat16


def test_other_file_variants_are_accepted(folders, file_states, tmp_path):
    """.safetensors Ouroboros files, full-precision .bin VAE and CLIP files; a CLIP file from
    transformers < 4.31 still holds the position ids buffer, which is ignored."""
    ckpt, svd = copy_folders(folders, tmp_path)
    for stem, state in (("mv_model_unet", file_states["mv"]), ("recon_model", file_states["lgm"])):
        (ckpt / f"{stem}.pth").unlink()
        save_file(state, ckpt / f"{stem}.safetensors")
    (svd / "vae" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    torch.save(file_states["vae"].state_dict(), svd / "vae" / "diffusion_pytorch_model.bin")
    clip_state = dict(file_states["clip"].state_dict())
    clip_state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    (svd / "image_encoder" / "model.safetensors").unlink()
    torch.save(clip_state, svd / "image_encoder" / "pytorch_model.bin")

    models = build_models(TINY, ckpt, svd)
    assert models.sources["mv"].endswith("mv_model_unet.safetensors")
    assert models.sources["clip"].endswith("pytorch_model.bin")
    assert_same_weights(models.lgm, file_states["lgm"])
    assert_same_weights(models.vae, file_states["vae"].state_dict())
    assert torch.equal(models.image_encoder.clip.vision_model.embeddings.position_ids, torch.arange(17)[None])


@pytest.mark.parametrize("edit,needle", [
    (lambda s: s.pop("cond_encoder.1.conv_in.bias"), "1 missing (first: cond_encoder.1.conv_in.bias)"),
    (lambda s: s.update({"extra.weight": torch.zeros(2)}), "1 unexpected (first: extra.weight)"),
    (lambda s: s.update({"mid_plucker.embed.2.bias": torch.zeros(5)}),
     "1 with wrong shape (first: mid_plucker.embed.2.bias [5] vs model [96])"),
])
def test_bad_mv_state_names_file_and_key(folders, file_states, tmp_path, edit, needle):
    ckpt, svd = copy_folders(folders, tmp_path)
    state = dict(file_states["mv"])
    edit(state)
    torch.save(state, ckpt / "mv_model_unet.pth")
    with pytest.raises(CheckpointError) as info:
        build_models(TINY, ckpt, svd)
    message = str(info.value)
    assert str(ckpt / "mv_model_unet.pth") in message and needle in message and "\n" not in message


def test_bad_lgm_state_names_file_and_key(folders, file_states, tmp_path):
    ckpt, svd = copy_folders(folders, tmp_path)
    state = {f"model.{k}": v for k, v in file_states["lgm"].items()}   # an unstripped training prefix
    torch.save(state, ckpt / "recon_model.pth")
    with pytest.raises(CheckpointError) as info:
        build_models(TINY, ckpt, svd)
    message = str(info.value)
    assert str(ckpt / "recon_model.pth") in message
    assert "missing (first: unet.conv_in.weight" in message and "unexpected (first: model.unet.conv_in.weight" in message


def test_bad_vae_file_names_it(folders, file_states, tmp_path):
    ckpt, svd = copy_folders(folders, tmp_path)
    path = svd / "vae" / "diffusion_pytorch_model.fp16.safetensors"
    state = {k: v for k, v in file_states["vae"].state_dict().items() if k != "quant_conv.weight"}
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.fp16\.safetensors.*1 missing \(first: quant_conv\.weight\)"):
        build_models(TINY, ckpt, svd)


@pytest.mark.parametrize("remove,needle", [
    ("unet/config.json", "unet/config.json: missing"),
    ("feature_extractor/preprocessor_config.json", "preprocessor_config.json: missing"),
    ("image_encoder/model.safetensors", "image_encoder: no weights file"),
    ("recon_model.pth", "recon_model.pth: file not found"),
])
def test_missing_files_are_named(folders, tmp_path, remove, needle):
    ckpt, svd = copy_folders(folders, tmp_path)
    (ckpt / remove if remove.endswith(".pth") else svd / remove).unlink()
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        build_models(TINY, ckpt, svd)


def test_unsupported_scheduler_config_names_file_and_field(folders, tmp_path):
    ckpt, svd = copy_folders(folders, tmp_path)
    path = svd / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "epsilon"}))
    with pytest.raises(CheckpointError, match=r"scheduler_config\.json: prediction_type is 'epsilon'"):
        build_models(TINY, ckpt, svd)


def test_one_folder_alone_is_refused(folders):
    with pytest.raises(CheckpointError, match="need both"):
        build_models(TINY, checkpoint_dir=folders[0])
    with pytest.raises(CheckpointError, match="SVD folder given without the checkpoint folder"):
        build_models(TINY, svd_dir=folders[1])


# ---- load_state_file / check_state_dict -------------------------------------------------------

def saved(tmp_path, obj, name="w.pth"):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def written(path, data: bytes):
    path.write_bytes(data)
    return path


def test_load_state_file_formats(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "a.bias": torch.arange(3)}
    for path in (saved(tmp_path, state, "w.pth"), saved(tmp_path, state, "w.bin")):
        loaded = load_state_file(path)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    save_file(state, tmp_path / "w.safetensors")
    assert torch.equal(load_state_file(tmp_path / "w.safetensors")["a.weight"], state["a.weight"])
    # a nested state dict is unwrapped only when there is exactly one candidate
    assert load_state_file(saved(tmp_path, {"state_dict": state, "epoch": 3})).keys() == state.keys()


@pytest.mark.parametrize("make,needle", [
    (lambda d: d / "absent.pth", "absent.pth: file not found"),
    (lambda d: written(d / "empty.pth", b""), "empty.pth: file is empty"),
    (lambda d: written(d / "notes.pth", b"these are not weights\n"), "notes.pth: cannot read weights"),
    (lambda d: d / "w.ckpt", "w.ckpt: unsupported weight file type '.ckpt'"),
    (lambda d: saved(d, [torch.zeros(1)], "list.pth"), "list.pth: holds a list, not a state dict"),
    (lambda d: saved(d, {"w": torch.zeros(1), "step": 5}, "mixed.pth"), "entry 'step' is a int"),
    (lambda d: saved(d, {"state_dict": {"w": torch.zeros(1)}, "module": {"w": torch.zeros(1)}}, "two.pth"),
     "ambiguous"),
])
def test_load_state_file_errors(tmp_path, make, needle):
    with pytest.raises(CheckpointError, match=needle) as info:
        load_state_file(make(tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["w.pth", "w.safetensors"])
def test_truncated_files_are_reported(tmp_path, name):
    state = {"w": torch.randn(64, 64)}
    path = tmp_path / name
    save_file(state, path) if name.endswith("safetensors") else torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{name}: cannot read weights, the file is truncated"):
        load_state_file(path)


def test_check_state_dict_lists_counts_and_first_keys():
    expected = {f"k{i}": torch.Size([2]) for i in range(6)}
    state = {f"k{i}": torch.zeros(2) for i in range(2, 6)} | {"x1": torch.zeros(1), "k5": torch.zeros(3)}
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected, state, "model.pth")
    assert str(info.value) == ("model.pth: weights do not match the model: 2 missing (first: k0, k1); "
                               "1 unexpected (first: x1); 1 with wrong shape (first: k5 [3] vs model [2])")
    check_state_dict(expected, {k: torch.zeros(2) for k in expected}, "model.pth")
