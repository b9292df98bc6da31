"""Data sets that read files: which files, where, and one clear error when they are absent.

A look-up checks for the files first and creates nothing.  Only a download
(``download=True``) writes to the data root; when it fails, everything it
created is removed again, so a failed attempt leaves no empty ``MNIST/raw``
behind, and the error says in one line which files to put where.

The UI reads :func:`needs_files` (show a data-folder field), :func:`path_option`
(show a folder field for that option, e.g. ``npz``'s ``path``) and
:func:`missing_files` (the same one-line message, from the disk alone, before
any run exists).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import shutil
import sys
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lipschitz_lab._registry import check_options
from lipschitz_lab.data.registry import DATASETS, DataRequest, DatasetNotFoundError
from lipschitz_lab.data.roots import DATA_ROOT_ENV


@dataclass(frozen=True)
class DataFiles:
    """The files a registered data set reads."""

    names: tuple[str, ...]         # file names, e.g. train-images-idx3-ubyte
    folder: str | None             # where under the data root ("MNIST/raw"); None: only path_option
    path_option: str | None = None  # the builder option that names the folder instead ("path")
    layout: str = ""               # words for the error message ("torchvision layout")


#: data set name -> the files it reads; a builder that reads files registers here
FILES: dict[str, DataFiles] = {}


def _known(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown data set name={name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    return name


def needs_files(name: str) -> bool:
    """True when data set ``name`` reads files from disk (the UI then offers a data folder)."""
    return _known(name) in FILES


def dataset_files(name: str) -> DataFiles | None:
    """The files data set ``name`` reads, or None for the ones that need none."""
    return FILES.get(_known(name))


def path_option(name: str) -> str | None:
    """The option of ``name``'s builder that takes a folder (``"path"`` for npz), or None."""
    files = dataset_files(name)
    return None if files is None else files.path_option


def dataset_option_names(name: str) -> tuple[str, ...]:
    """The keyword-only options of ``name``'s builder, in order (``("path", "augmentation")`` for npz)."""
    params = inspect.signature(DATASETS[_known(name)]).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(re.sub(r"https?://\S+", "<url>", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def locate(key: str, request: DataRequest, path: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """The folder data set ``key`` reads, and the end of its not-found message.

    ``path``: the builder's folder option, when given.  A data set without a
    ``folder`` (npz) reads ``path``, else an explicit ``data_root``, else nothing (None).
    """
    files = FILES[key]
    if path is not None:
        return Path(path).expanduser(), f"or set {files.path_option} to the folder that holds them"
    if files.folder is None:
        root = None if request.data_root is None else Path(request.data_root).expanduser()
        return root, f"or set {files.path_option} to the folder that holds them"
    folder = request.root() / files.folder
    return folder, root_hint(request, folder, option=files.path_option)


def missing_files(name: str, *, data_root: str | os.PathLike | None = None, **options) -> str | None:
    """The one-line message :func:`get_dataset` would raise (with ``download=False``), else None.

    Looks only at the disk: creates, downloads and reads nothing.  None also
    for data sets that need no files; an option the builder lacks raises ``ValueError``.
    """
    files = FILES.get(_known(name))
    if files is None:
        return None
    check_options(DATASETS[name], "data set", name, options)
    request = DataRequest(name, data_root, 0, 0.0, False, None, False)
    folder, hint = locate(name, request, options.get(files.path_option) if files.path_option else None)
    if folder is None:
        return f"data set {name!r} needs {files.path_option}= a folder holding {', '.join(files.names)}; " \
               f"got {files.path_option}=None"
    if all((folder / f).is_file() for f in files.names):
        return None
    return str(not_found(request, folder, files.names, None, layout=files.layout, hint=hint))


def download_failure(err: BaseException) -> str:
    """Why a download failed, in a few words and without URLs."""
    seen = err
    while seen is not None:
        if isinstance(seen, urllib.error.HTTPError):
            return f"the download failed (HTTP {seen.code})"
        if isinstance(seen, urllib.error.URLError):
            return f"the download failed (no network: {_one_line(str(seen.reason))})"
        seen = seen.__cause__ or seen.__context__
    # torchvision's MNIST folds each mirror's URLError into the text of one RuntimeError
    found = re.search(r"urlopen error ([^>\n]+)>", str(err))
    if found:
        return f"the download failed (no network: {_one_line(found.group(1))})"
    return f"the download failed: {_one_line(str(err)) or type(err).__name__}"


def not_found(request: DataRequest, folder: Path, names: tuple[str, ...], reason: str | None,
              *, layout: str = "", hint: str) -> DatasetNotFoundError:
    """The one-line error: which files to put in which folder, and why they are not there."""
    missing = [f for f in names if not (folder / f).is_file()] or list(names)
    others = len(names) - len(missing)
    there = f" (the other {others} are there)" if others else ""
    layout = f" ({layout})" if layout else ""
    why = f"; {reason}" if reason else ""
    return DatasetNotFoundError(f"dataset={request.name!r}: files not found: put {', '.join(missing)}"
                                f"{layout} in {folder}{there}, {hint}{why}")


def root_hint(request: DataRequest, folder: Path, *, option: str | None = None) -> str:
    """"or set $LIPSCHITZ_LAB_DATA / data_root to the folder that holds MNIST/raw/"."""
    settings = f"${DATA_ROOT_ENV} / data_root"
    if option is not None:
        settings = f"{option} to this folder, or {settings}"
    try:
        below = folder.relative_to(request.root())
    except ValueError:
        return f"or set {settings}"
    return f"or set {settings} to the folder that holds {below.as_posix()}/"


def _snapshot(folder: Path) -> dict[Path, set[str] | None]:
    """The entries of ``folder`` and of each of its ancestors, up to the first that exists."""
    shots: dict[Path, set[str] | None] = {}
    for path in (folder, *folder.parents):
        if path.is_dir():
            shots[path] = {p.name for p in path.iterdir()}
            break
        shots[path] = None      # created by the download, if at all: removed with its parent's entry
    return shots


def _undo(shots: dict[Path, set[str] | None]) -> None:
    """Remove what appeared in the snapshotted folders since the snapshot."""
    for path, before in shots.items():
        if before is None or not path.is_dir():
            continue
        for entry in path.iterdir():
            if entry.name not in before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def attempt_download(folder: Path, download: Callable[[], object], *, also: Path | None = None) -> str | None:
    """Run ``download``; on failure remove what it created and return why, else None.

    ``also``: another folder the download writes into (CIFAR's archive lands in
    the data root, beside ``cifar-10-batches-py/``).  torchvision prints its URLs
    on stdout; they are shown only when the download works.  The undo removes
    every entry that appeared in those folders meanwhile, so two downloads into
    one data root at the same moment may undo each other (the next try repeats it).
    """
    shots = _snapshot(folder)
    if also is not None and also.is_dir() and also not in shots:
        shots[also] = {p.name for p in also.iterdir()}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            download()
    # torchvision wraps failed mirrors in RuntimeError (also its MD5 check);
    # urllib's URLError and socket errors are OSErrors
    except (RuntimeError, OSError) as err:
        _undo(shots)
        return download_failure(err)
    except BaseException:       # Ctrl-C in a notebook: no half-written folder either
        _undo(shots)
        raise
    sys.stdout.write(out.getvalue())
    return None


def require_files(request: DataRequest, folder: Path, names: tuple[str, ...],
                  download: Callable[[], object] | None, *, layout: str = "", hint: str,
                  also: Path | None = None) -> None:
    """Return when all ``names`` are in ``folder`` (after a download, when allowed); else raise."""
    if all((folder / f).is_file() for f in names):
        return
    if download is None:
        reason = None
    elif not request.download:
        reason = "download=False"
    else:
        reason = attempt_download(folder, download, also=also)
        if reason is None:
            if all((folder / f).is_file() for f in names):
                return
            reason = "the download did not produce them"
    raise not_found(request, folder, names, reason, layout=layout, hint=hint)
