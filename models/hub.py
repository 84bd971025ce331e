"""Hugging Face Hub repo ids as weight folders: `--checkpoint huanngzh/Ouroboros3D-SVD-LGM`.

A value that exists on disk is a local folder. A value of the form `owner/name` or
`owner/name@revision` that does not exist on disk is a hub repo id: it resolves, through
huggingface_hub, to a snapshot folder in the hub's own cache (HF_HOME / HF_HUB_CACHE), and only
the files ort3d reads are downloaded (`RepoFiles`). With HF_HUB_OFFLINE set nothing is looked
up online: the files must already be in the cache. Anything else is a folder that does not
exist. Every failure is a one-line CheckpointError.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from huggingface_hub import HfApi, constants, snapshot_download, try_to_load_from_cache
from huggingface_hub.utils import (
    GatedRepoError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError, validate_repo_id,
)

from ort3d.models.state_files import CheckpointError, first_sentence

# owner/name[@revision]; the name rules themselves are huggingface_hub's (validate_repo_id).
_HUB_ID = re.compile(r"(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<revision>[^@\s]+))?")
_TRUE = {"1", "ON", "YES", "TRUE"}   # huggingface_hub's reading of boolean env vars


@dataclass(frozen=True)
class RepoFiles:
    """The files ort3d reads from one repository. Each entry lists alternatives in the loader's
    order of preference; the first one the repository has is the one fetched."""
    label: str                                  # what the repository holds, for messages
    entries: tuple[tuple[str, ...], ...]

    def choose(self, available: Collection[str]) -> tuple[list[str], list[tuple[str, ...]]]:
        """(the files to fetch, the entries of which `available` has no alternative)."""
        available = set(available)
        chosen, missing = [], []
        for alternatives in self.entries:
            found = [name for name in alternatives if name in available]
            if found:
                chosen.append(found[0])
            else:
                missing.append(alternatives)
        return chosen, missing


def parse_hub_id(value: str) -> tuple[str, str | None] | None:
    """`owner/name[@revision]` -> (repo id, revision or None); None when `value` is not one."""
    match = _HUB_ID.fullmatch(value)
    if match is None:
        return None
    try:
        validate_repo_id(match["repo"])
    except HFValidationError:
        return None
    return match["repo"], match["revision"]


def resolve_folders(*requests: tuple[str | Path, RepoFiles]) -> list[Path]:
    """(--checkpoint / --svd value, its RepoFiles) pairs -> each value's local folder (see the
    module doc). Local values are checked first and every repository is looked up before anything
    is downloaded, so a mistyped folder or a wrong repo id costs no download of the other value."""
    folders = [_local_folder(value, files) for value, files in requests]
    fetches = [_hub_folder(value, files) if folder is None else (lambda folder=folder: folder)
               for folder, (value, files) in zip(folders, requests)]
    return [fetch() for fetch in fetches]


def _local_folder(value: str | Path, files: RepoFiles) -> Path | None:
    """The folder `value` names on disk; None when it is a hub repo id instead."""
    local = Path(value).expanduser()
    if not isinstance(value, str) or local.exists():   # a Path is a path, never a repo id
        return local
    if parse_hub_id(value) is None:
        raise CheckpointError(f"{local}: {files.label} folder not found")
    return None


def _hub_folder(value: str, files: RepoFiles) -> Callable[[], Path]:
    """A function giving the snapshot folder: look-ups happen now, the download when it is called."""
    repo_id, revision = parse_hub_id(value)
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        folder = _cached_snapshot(value, repo_id, revision, files, why="HF_HUB_OFFLINE is set",
                                  fix="unset HF_HUB_OFFLINE to download it")
        return lambda: folder
    return _planned_download(value, repo_id, revision, files)


def _planned_download(value: str, repo_id: str, revision: str | None, files: RepoFiles) -> Callable[[], Path]:
    """List the repository now (its errors, or the cache when the Hub is unreachable); download later."""
    try:
        listing = HfApi().list_repo_files(repo_id, revision=revision)
    except GatedRepoError as error:
        raise CheckpointError(f"{repo_id}: the repository is gated; accept its terms on huggingface.co "
                              "and log in (hf auth login, or set HF_TOKEN)") from error
    except RepositoryNotFoundError as error:
        raise CheckpointError(f"{value}: not a local folder, and no Hugging Face Hub repository "
                              f"{repo_id} is visible (private? log in with hf auth login)") from error
    except RevisionNotFoundError as error:
        raise CheckpointError(f"{repo_id}: the repository has no revision {revision!r}") from error
    except Exception as error:   # no connection, Hub down, proxy, ...: the cache may still hold it
        folder = _cached_snapshot(value, repo_id, revision, files,
                                  why=f"the Hub cannot be reached ({first_sentence(error)})",
                                  fix="check the connection")
        return lambda: folder
    wanted, missing = files.choose(listing)
    if missing:
        raise CheckpointError(f"{_at(repo_id, revision)}: has no {_describe(missing)}; "
                              f"is it the {files.label} repository?")

    def download() -> Path:
        try:
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=wanted))
        except Exception as error:   # disk full, connection lost mid-way, ...
            raise CheckpointError(f"{_at(repo_id, revision)}: download into {constants.HF_HUB_CACHE} "
                                  f"failed ({first_sentence(error)})") from error
    return download


def _cached_snapshot(value: str, repo_id: str, revision: str | None, files: RepoFiles,
                     why: str, fix: str) -> Path:
    """The cache's snapshot folder for the revision, when it holds one alternative of every entry."""
    cached = {}
    for alternatives in files.entries:
        for name in alternatives:
            path = try_to_load_from_cache(repo_id, name, revision=revision)
            if isinstance(path, str):   # the other results: not cached, or cached as absent
                cached[alternatives] = (name, path)
                break
    missing = [alternatives for alternatives in files.entries if alternatives not in cached]
    if len(missing) == len(files.entries):
        raise CheckpointError(f"{value}: not a local folder, and this Hugging Face Hub repository is not "
                              f"in the cache {constants.HF_HUB_CACHE} ({why}); {fix}, or give a local folder")
    name, path = next(iter(cached.values()))
    folder = Path(path).parents[len(PurePosixPath(name).parts) - 1]
    if missing:
        raise CheckpointError(f"{_at(repo_id, revision)}: the cached copy {folder} lacks "
                              f"{_describe(missing)} ({why}); {fix}")
    return folder


def _at(repo_id: str, revision: str | None) -> str:
    return repo_id if revision is None else f"{repo_id}@{revision}"


def _describe(missing: list[tuple[str, ...]]) -> str:
    return ", ".join(" or ".join(alternatives) for alternatives in missing)
