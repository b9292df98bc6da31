"""Both ends of a remote worker's run store: the proxy a worker trains against, and the
driver's side that writes what it sends into the one SQLite file.

Only the driver writes the store (SQLite must not live on a network file system).
A worker runs ``trainer.train(config, store=RemoteStore(...))``; the proxy has the
surface the trainer uses (``create_run``, ``get_run``, ``find_run``, ``truncate``,
``set_status``, ``append_records`` through :class:`~lipschitz_lab.runs.StoreWriter`,
``delete_run``, ``checkpoint_path``, ``publish_checkpoint``, ``path``) and turns each
write into a message ``(op, args, kwargs)`` of plain data for ``send``.  ``send``
returns once the message is safely on the driver's side (Ray: the hub actor), so the
driver sees a worker's writes whole and in order, up to the moment the worker died.

Checkpoints travel as messages too: the trainer stages one beside ``checkpoint_path`` (a
temp folder on the worker) and calls ``publish_checkpoint``; the proxy ships the bytes,
after the records of the same epoch.  The driver keeps the newest at
``RunStore.checkpoint_path`` and seeds the next attempt's worker with it
(:meth:`RemoteStore.seed_checkpoint`), so a run whose node died resumes on another node.

:class:`Receiver` is the driver's end for one attempt of one run: it applies the
messages through a :class:`~lipschitz_lab.runs.leases.LeasedStore` and maps the run
id the worker drew to the id the store gave.  Every write it makes is fenced by the
run's lease in the write's own transaction (a checkpoint is staged, then moved into place
inside one), so a driver that stalled past its lease timeout and was taken over writes
nothing more: not a record, not a status, not a checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from lipschitz_lab.runs.leases import LeasedStore, log
from lipschitz_lab.runs.store import STATUSES, new_run_id

__all__ = ["RemoteStore", "Receiver"]

Message = tuple[str, tuple, dict]


class RemoteStore:
    """The run store as a remote worker sees it: one run, every write sent to the driver.

    ``run`` is the run's row when the worker resumes it (``get_run``/``find_run`` answer
    from it); ``folder`` is the worker's scratch folder (checkpoints go under it).
    """

    def __init__(self, folder: str | os.PathLike, send: Callable[[Message], Any], run: dict | None = None):
        self.path = Path(folder) / "remote.db"      # never opened: the trainer keeps checkpoints beside it
        self._send, self._run = send, dict(run) if run else None

    # -- reads: the one run, as the driver sent it or as this worker made it --------------
    def get_run(self, run_id: str) -> dict:
        if self._run is None or self._run["id"] != run_id:
            raise ValueError(f"unknown run id {run_id!r}")
        return dict(self._run)

    def find_run(self, key: str) -> dict | None:
        return dict(self._run) if self._run is not None and self._run.get("key") == key else None

    def artifacts(self, run_id: str) -> dict[str, str]:
        return {}                                   # the driver's paths mean nothing on this node

    def checkpoint_path(self, run_id: str) -> Path:
        return self.path.parent / "checkpoints" / f"{run_id}.pt"

    # -- writes: each one a message to the driver ----------------------------------------
    def create_run(self, config: dict, *, name: str | None = None, study: str | None = None,
                   key: str | None = None) -> str:
        run_id = new_run_id()                       # the driver keeps it unless the store has it already
        self._forward("create_run", config, name=name, study=study, key=key, run_id=run_id)
        self._run = {"id": run_id, "name": name, "study": study, "key": key, "config": config,
                     "status": "running", "reason": None, "artifacts": {}}
        return run_id

    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self._forward("set_status", run_id, status, reason)
        if self._run is not None and self._run["id"] == run_id:
            self._run.update(status=status, reason=reason)

    def append_records(self, run_id: str, records: list[dict]) -> None:
        self._forward("append_records", run_id, [dict(r) for r in records])

    def truncate(self, run_id: str, *, after_step: int | None = None, after_epoch: int | None = None) -> int:
        """Forwarded; returns 0 (the driver knows how many records it dropped)."""
        if after_step is None and after_epoch is None:
            raise ValueError("truncate needs after_step or after_epoch, got neither")
        self._forward("truncate", run_id, after_step=after_step, after_epoch=after_epoch)
        return 0

    def delete_run(self, run_id: str) -> None:
        self._forward("delete_run", run_id)
        if self._run is not None and self._run["id"] == run_id:
            self._run = None

    def checkpoint_saved(self, run_id: str, path: str | os.PathLike, epoch: int | None) -> None:
        """Ship the checkpoint at ``path`` to the driver."""
        self._forward("checkpoint", run_id, Path(path).read_bytes(), epoch)

    def publish_checkpoint(self, run_id: str, staged: str | os.PathLike, epoch: int | None) -> Path:
        """Ship the checkpoint the trainer just staged to the driver, then keep it here too."""
        from lipschitz_lab.runs.checkpoint import publish
        self.checkpoint_saved(run_id, staged, epoch)
        return publish(staged, self.checkpoint_path(run_id))

    def seed_checkpoint(self, run_id: str, data: bytes) -> None:
        """Put the driver's checkpoint where the trainer will read it, before a resume."""
        path = self.checkpoint_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def close(self) -> None:
        pass

    def _forward(self, op: str, *args, **kwargs) -> None:
        self._send((op, args, kwargs))


class Receiver:
    """The driver's end for one attempt of one run: applies its messages, in order, to the store."""

    _OPS = ("create_run", "set_status", "append_records", "truncate", "delete_run", "checkpoint", "worker")

    def __init__(self, path, key: str, owner: str):
        self.store = LeasedStore(path, key, owner)
        self.key, self.owner = key, owner
        self.ids: dict[str, str] = {}               # the worker's run id -> the store's
        self.worker: dict | None = None             # where it trains: host, pid, node
        self.error: BaseException | None = None     # why the driver gave this attempt up

    def run_id(self, worker_id: str | None) -> str | None:
        return self.ids.get(worker_id, worker_id)

    def apply(self, message: Message) -> None:
        op, args, kwargs = message
        if op not in self._OPS:
            raise ValueError(f"message op={op!r}: not one of {', '.join(self._OPS)}")
        getattr(self, f"_{op}")(*args, **kwargs)

    def _create_run(self, config: dict, *, name, study, key, run_id) -> None:
        self.ids[run_id] = self.store.create_run(config, name=name, study=study, key=key, run_id=run_id)

    def _set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        self.store.set_status(self.run_id(run_id), status, reason)

    def _append_records(self, run_id: str, records: list[dict]) -> None:
        self.store.append_records(self.run_id(run_id), records)

    def _truncate(self, run_id: str, **kwargs) -> None:
        self.store.truncate(self.run_id(run_id), **kwargs)

    def _delete_run(self, run_id: str) -> None:
        self.store.delete_run(self.run_id(run_id))

    def _checkpoint(self, run_id: str, data: bytes, epoch: int | None) -> None:
        from lipschitz_lab.runs.checkpoint import stage
        run_id = self.run_id(run_id)
        staged = stage(self.store.checkpoint_path(run_id), lambda f: f.write(data))
        # moved into place inside the transaction that checks the lease: a run taken over keeps
        # its new owner's checkpoint
        self.store.publish_checkpoint(run_id, staged, epoch)

    def _worker(self, info: dict) -> None:
        self.worker = dict(info)
        run = self.store.find_run(self.key)
        log(self.store, "worker", run_id=run["id"] if run else None, key=self.key, owner=self.owner,
            detail=" ".join(f"{k}={v}" for k, v in info.items()))

    def close(self) -> None:
        self.store.close()
