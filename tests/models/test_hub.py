"""Hub repo ids for --checkpoint / --svd: resolution through a fake hub cache in tmp_path (the real
layout: models--owner--name/{refs/<revision>, blobs/<sha256>, snapshots/<commit>/<file> -> blob}).
Nothing here touches the network: sockets refuse, and the online path runs against a stand-in
Hub (its file listing and its download, both faked)."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

from checkpoint_files import tiny_file_states, write_weight_folders
from ort3d.models import hub
from ort3d.models.checkpoint import OUROBOROS_FILES, SVD_FILES, CheckpointError, build_models
from ort3d.models.hub import parse_hub_id, resolve_folders
from ort3d.models.presets import TINY

OURO_ID = "huanngzh/Ouroboros3D-SVD-LGM"
SVD_ID = "stabilityai/stable-video-diffusion-img2vid"
# The released repositories' layouts: SVD in diffusers format with both variants and the
# original-format files beside it; only the files ort3d reads may be fetched.
SVD_LISTING = [
    ".gitattributes", "LICENSE", "README.md", "model_index.json", "svd.safetensors",
    "svd_image_decoder.safetensors", "feature_extractor/preprocessor_config.json",
    "image_encoder/config.json", "image_encoder/model.fp16.safetensors", "image_encoder/model.safetensors",
    "scheduler/scheduler_config.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors",
]
SVD_NEEDED = [
    "unet/config.json", "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
    "image_encoder/config.json", "image_encoder/model.fp16.safetensors",
    "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json",
]
OURO_LISTING = [".gitattributes", "README.md", "mv_model_unet.pth", "recon_model.pth"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hub cache, offline. huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE once at
    import, so the in-process tests set its constant too (a fresh process reading HF_HOME is
    test_hf_home_is_honoured_by_a_fresh_process); ort3d reads HF_HUB_OFFLINE at call time."""
    root = tmp_path / "hf_cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


@pytest.fixture(scope="module")
def file_states():
    return tiny_file_states()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, file_states):
    """The stand-in repositories: the tiny weight folders plus files ort3d must never fetch."""
    ckpt, svd = write_weight_folders(tmp_path_factory.mktemp("repos"), file_states)
    for folder, extras in ((ckpt, ("README.md",)),
                           (svd, ("README.md", "svd.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"))):
        for name in extras:
            (folder / name).write_bytes(b"not needed by ort3d\n")
    return ckpt, svd


def repo_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def commit_of(repo_id: str, revision: str = "main") -> str:
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


def cache_files(cache: Path, repo_id: str, source: Path, names, revision: str = "main") -> Path:
    """Put `names` from `source` into the cache as huggingface_hub lays them out; -> the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = commit_of(repo_id, revision)
    snapshot = repo / "snapshots" / commit
    for name in names:
        data = (source / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def cache_needed(cache, folders):
    """Both repositories cached with exactly the files ort3d fetches from them."""
    ckpt, svd = folders
    snapshots = []
    for repo_id, folder, files in ((OURO_ID, ckpt, OUROBOROS_FILES), (SVD_ID, svd, SVD_FILES)):
        wanted, missing = files.choose(repo_files(folder))
        assert not missing
        snapshots.append(cache_files(cache, repo_id, folder, wanted))
    return snapshots


def assert_one_line(error: CheckpointError, *needles):
    message = str(error)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)


# ---- which values are repo ids, which files are fetched -----------------------------------------

@pytest.mark.parametrize("value,expected", [
    (OURO_ID, (OURO_ID, None)),
    ("owner/name@v1.0", ("owner/name", "v1.0")),
    ("owner/name@refs/pr/3", ("owner/name", "refs/pr/3")),
    ("Ouroboros3D-SVD-LGM/", None),            # the README's local folder
    ("weights/ouroboros/svd", None),
    ("./ouroboros", None),
    ("/abs/folder", None),
    ("single-name", None),                     # a repo id here always has an owner
    ("owner/name@", None),
    ("owner/na--me", None),                    # huggingface_hub's own name rules
    ("owner/name with space", None),
])
def test_parse_hub_id(value, expected):
    assert parse_hub_id(value) == expected


def test_svd_fetches_the_configs_and_fp16_vae_and_encoder_never_unet_weights():
    wanted, missing = SVD_FILES.choose(SVD_LISTING)
    assert wanted == SVD_NEEDED and not missing
    without_fp16 = [name for name in SVD_LISTING if ".fp16." not in name]
    wanted, _ = SVD_FILES.choose(without_fp16)
    assert "vae/diffusion_pytorch_model.safetensors" in wanted and "image_encoder/model.safetensors" in wanted
    assert not any(name.startswith("unet/") and name != "unet/config.json" for name in wanted)


def test_ouroboros_fetches_the_two_state_files_safetensors_first():
    assert OUROBOROS_FILES.choose(OURO_LISTING) == (["mv_model_unet.pth", "recon_model.pth"], [])
    wanted, _ = OUROBOROS_FILES.choose([*OURO_LISTING, "mv_model_unet.safetensors"])
    assert wanted == ["mv_model_unet.safetensors", "recon_model.pth"]
    assert OUROBOROS_FILES.choose(SVD_LISTING)[1] == [("mv_model_unet.safetensors", "mv_model_unet.pth"),
                                                      ("recon_model.safetensors", "recon_model.pth")]


# ---- offline: the cache ---------------------------------------------------------------------------

def test_offline_from_cache_end_to_end(cache, folders, file_states, monkeypatch):
    ouro_snapshot, svd_snapshot = cache_needed(cache, folders)
    monkeypatch.setattr(HfApi, "list_repo_files", lambda *a, **k: pytest.fail("listed the Hub offline"))
    models = build_models(TINY, OURO_ID, SVD_ID)
    assert models.sources["mv"] == str(ouro_snapshot / "mv_model_unet.pth")
    assert models.sources["vae"] == str(svd_snapshot / "vae" / "diffusion_pytorch_model.fp16.safetensors")
    loaded = models.mv.state_dict()
    assert all(torch.equal(loaded[k], v.float()) for k, v in file_states["mv"].items())


def test_offline_revision_picks_its_snapshot(cache, folders):
    ckpt, _ = folders
    cache_files(cache, OURO_ID, ckpt, ["mv_model_unet.pth", "recon_model.pth"])
    tagged = cache_files(cache, OURO_ID, ckpt, ["mv_model_unet.pth", "recon_model.pth"], revision="v1")
    assert resolve_folders((f"{OURO_ID}@v1", OUROBOROS_FILES)) == [tagged]
    assert resolve_folders((f"{OURO_ID}@{commit_of(OURO_ID, 'v1')}", OUROBOROS_FILES)) == [tagged]


def test_offline_and_not_cached_is_one_line_naming_the_repo(cache):
    with pytest.raises(CheckpointError) as info:
        build_models(TINY, OURO_ID, SVD_ID)
    assert_one_line(info.value, OURO_ID, "not a local folder", str(cache), "unset HF_HUB_OFFLINE")


def test_offline_and_partly_cached_names_the_missing_files(cache, folders):
    cache_files(cache, OURO_ID, folders[0], ["mv_model_unet.pth"])
    with pytest.raises(CheckpointError) as info:
        resolve_folders((OURO_ID, OUROBOROS_FILES))
    assert_one_line(info.value, OURO_ID, "lacks recon_model.safetensors or recon_model.pth", "HF_HUB_OFFLINE")


# ---- local folders --------------------------------------------------------------------------------

def test_an_existing_local_folder_wins_over_the_repo_id(cache, folders, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for repo_id, folder in zip((OURO_ID, SVD_ID), folders):
        shutil.copytree(folder, repo_id)
    cache_needed(cache, folders)   # the same ids are cached too: still the local folders are used
    monkeypatch.setattr(HfApi, "list_repo_files", lambda *a, **k: pytest.fail("asked the Hub"))
    models = build_models(TINY, OURO_ID, SVD_ID)
    assert models.sources["mv"] == str(Path(OURO_ID) / "mv_model_unet.pth")
    assert models.sources["clip"] == str(Path(SVD_ID) / "image_encoder" / "model.safetensors")


# ---- online: a stand-in Hub -----------------------------------------------------------------------

@pytest.fixture
def online_hub(cache, folders, monkeypatch):
    """The Hub as the stand-in repositories: listing and download recorded, the download writes
    the requested files into the cache."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    remote = dict(zip((OURO_ID, SVD_ID), folders))
    calls = []

    def list_repo_files(self, repo_id, *, revision=None, **kwargs):
        calls.append(("list", repo_id, revision))
        if repo_id not in remote:
            raise RepositoryNotFoundError("404 Repository Not Found",
                                          response=types.SimpleNamespace(headers={}, request=None))
        return repo_files(remote[repo_id])

    def snapshot_download(repo_id, *, revision=None, allow_patterns=None, **kwargs):
        calls.append(("download", repo_id, allow_patterns))
        return str(cache_files(cache, repo_id, remote[repo_id], allow_patterns))

    monkeypatch.setattr(HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    return calls


@pytest.mark.parametrize("value", ["no-such-folder", "no/such/folder", "missing/"])
def test_other_values_are_folders_not_found(online_hub, value):
    """...found before the other value, a repo id, is looked up or downloaded."""
    with pytest.raises(CheckpointError, match=f"^{Path(value)}: Ouroboros3D checkpoint folder not found$"):
        build_models(TINY, value, SVD_ID)
    with pytest.raises(CheckpointError, match=f"^{Path(value)}: SVD img2vid base model folder not found$"):
        build_models(TINY, OURO_ID, value)
    assert online_hub == []


def test_online_downloads_only_the_needed_files_after_both_listings(online_hub, file_states):
    models = build_models(TINY, OURO_ID, SVD_ID)
    # the stand-in SVD repo has no fp16 image encoder, so its fp32 file is the one fetched
    svd_needed = [n.replace(".fp16", "") if n.startswith("image_encoder/") else n for n in SVD_NEEDED]
    assert online_hub == [("list", OURO_ID, None), ("list", SVD_ID, None),
                          ("download", OURO_ID, ["mv_model_unet.pth", "recon_model.pth"]),
                          ("download", SVD_ID, svd_needed)]
    loaded = models.lgm.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in file_states["lgm"].items())


def test_online_wrong_repository_is_refused_before_any_download(online_hub):
    with pytest.raises(CheckpointError) as info:
        build_models(TINY, SVD_ID, SVD_ID)
    assert_one_line(info.value, SVD_ID, "has no mv_model_unet.safetensors or mv_model_unet.pth",
                    "Ouroboros3D checkpoint repository")
    with pytest.raises(CheckpointError) as info:
        build_models(TINY, OURO_ID, "someone/absent")
    assert_one_line(info.value, "someone/absent: not a local folder", "no Hugging Face Hub repository")
    assert not [call for call in online_hub if call[0] == "download"]


def test_online_gated_repository_says_how_to_get_access(online_hub, monkeypatch):
    def gated(self, repo_id, **kwargs):
        raise GatedRepoError("403 gated", response=types.SimpleNamespace(headers={}, request=None))

    monkeypatch.setattr(HfApi, "list_repo_files", gated)
    with pytest.raises(CheckpointError) as info:
        resolve_folders((SVD_ID, SVD_FILES))
    assert_one_line(info.value, SVD_ID, "gated", "log in")


def test_unreachable_hub_falls_back_to_the_cache(online_hub, cache, folders, monkeypatch):
    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(HfApi, "list_repo_files", unreachable)
    with pytest.raises(CheckpointError) as info:
        resolve_folders((OURO_ID, OUROBOROS_FILES))
    assert_one_line(info.value, OURO_ID, "not in the cache", "cannot be reached (ConnectionError")
    snapshot, _ = cache_needed(cache, folders)
    assert resolve_folders((OURO_ID, OUROBOROS_FILES)) == [snapshot]


def test_hf_home_is_honoured_by_a_fresh_process(tmp_path, folders):
    """HF_HOME and HF_HUB_OFFLINE as a user sets them, read by huggingface_hub at import."""
    snapshot = cache_files(tmp_path / "home" / "hub", OURO_ID, folders[0], ["mv_model_unet.pth", "recon_model.pth"])
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    code = ("from ort3d.models.checkpoint import OUROBOROS_FILES; from ort3d.models.hub import resolve_folders; "
            f"print(resolve_folders(({OURO_ID!r}, OUROBOROS_FILES))[0])")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(snapshot)
