"""Checkpoints that are never half-written, and the RNG states that make a resume exact.

Everything saved here loads with ``torch.load(..., weights_only=True)``: only
tensors, lists, tuples, dicts, ints, floats, str and None.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """``torch.save`` to a temp file beside ``path``, then ``os.replace`` it into place.

    A crash mid-save leaves the previous checkpoint (or none), never a torn one:
    ``os.replace`` within one folder is atomic on POSIX and Windows.
    """
    return publish(stage_checkpoint(path, state), path)


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Bytes to ``path``, all or nothing, as :func:`save_checkpoint`."""
    return publish(stage(path, lambda f: f.write(data)), path)


def stage_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """The first half of :func:`save_checkpoint`: ``state`` in a temp file beside ``path``, on
    the disk; :func:`publish` (or a run store's ``publish_checkpoint``, which checks the run's
    lease in the same transaction) puts it in place."""
    return stage(path, lambda f: torch.save(state, f))


def stage(path: str | os.PathLike, write) -> Path:
    """``write(file)`` into a temp file beside ``path``, flushed to the disk; its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes reach the disk before the name points at them
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def publish(staged: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Rename a staged file to ``path`` (atomic within one folder) and make the rename durable."""
    path = Path(path)
    try:
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; folders cannot be opened this way on Windows
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: no arbitrary code runs."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def rng_state() -> dict:
    """Python ``random``, numpy's global RNG and torch's (CPU and every CUDA device).

    numpy's key array becomes an int64 tensor so that the whole state loads with
    ``weights_only=True``.
    """
    version, mt, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": (version, tuple(mt), gauss_next),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached_gaussian)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (after a save/load round trip too).

    CUDA states are restored for the devices this machine has; a checkpoint from
    a GPU machine resumed on a CPU one restores the CPU streams only.
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(f"rng state is missing fields: {missing}")
    version, mt, gauss_next = state["python"]
    random.setstate((version, tuple(mt), gauss_next))
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    if isinstance(keys, torch.Tensor):        # a checkpoint loaded with map_location="cuda" moved it there
        keys = keys.cpu()
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss,
                         cached_gaussian))
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available():
        for device, cuda_state in enumerate(state.get("cuda", [])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
