"""The Ray backend: one Ray task per run, each with its own CPUs (and a GPU when the
config trains on CUDA), across whatever cluster ``address`` names.

- ``address=None``: a local cluster started for the call and shut down after it (the
  start costs a few seconds: :attr:`RayBackend.startup_s`, benchmarks/RESULTS.md); a Ray
  already initialised in this process is used as it is and left running;
- ``"auto"``: the cluster that ``ray start`` runs on this machine (or ``$RAY_ADDRESS``);
- ``"ray://host:port"``: a remote cluster, through Ray Client.

Workers write nothing.  Each trains against a
:class:`~lipschitz_lab.studies.remote_store.RemoteStore` whose messages go to a hub
actor on the driver's node; the driver drains the hub at every poll and alone writes
the SQLite store, through a :class:`~lipschitz_lab.studies.remote_store.Receiver` per
attempt (which checks the run's lease).  A task whose worker or node dies is sent again,
up to ``max_attempts`` times, with the newest checkpoint the driver holds; Ray's own
``max_retries`` would resend the first attempt's arguments, and so its checkpoint.
Every node needs lipschitz-lab installed, and the data sets where the config says.
This module imports ray: only ``backend="ray"`` imports it.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import tempfile
import threading
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lipschitz_lab.runs.leases import LeaseLost, log
from lipschitz_lab.studies.backend import MAX_ATTEMPTS, Backend, Job
from lipschitz_lab.studies.execute import execute_run, lost_note, one_line, record_failure
from lipschitz_lab.studies.remote_store import Receiver, RemoteStore

__all__ = ["RayBackend"]

#: seconds between a worker's looks at the hub for a stop
STOP_POLL_S = 0.5


class _Hub:
    """The actor every worker sends its messages to; the driver drains it."""

    def __init__(self):
        self._messages: list[tuple[str, Any]] = []
        self._stop_all, self._stop = False, set()

    def put(self, token: str, message) -> bool:
        self._messages.append((token, message))
        return self.stopping(token)

    def drain(self) -> list[tuple[str, Any]]:
        out, self._messages = self._messages, []
        return out

    def stop(self, token: str | None = None) -> None:
        """Stop one attempt (its lease is lost), or every run (``None``: the study's stop)."""
        if token is None:
            self._stop_all = True
        else:
            self._stop.add(token)

    def stopping(self, token: str) -> bool:
        return self._stop_all or token in self._stop


def _train_task(job: Job, run: dict | None, checkpoint: bytes | None, token: str, hub, threads: int) -> dict:
    """On a worker: train ``job``'s run against a RemoteStore; every write goes to ``hub``."""
    import torch
    torch.set_num_threads(threads)
    stop, done = threading.Event(), threading.Event()

    def send(message) -> None:
        if ray.get(hub.put.remote(token, message)):
            stop.set()

    def watch() -> None:                    # a stop between two writes (a write also brings one)
        while not done.wait(STOP_POLL_S):
            if ray.get(hub.stopping.remote(token)):
                stop.set()
                return

    where = {"host": socket.gethostname(), "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()[:12]}
    send(("worker", (where,), {}))
    threading.Thread(target=watch, name="lipschitz-lab-stop", daemon=True).start()
    try:
        with tempfile.TemporaryDirectory(prefix="lipschitz-lab-") as folder:
            store = RemoteStore(folder, send, run)
            if checkpoint is not None:
                store.seed_checkpoint(job.run_id, checkpoint)
            return execute_run(job.plan, store, job.action, job.run_id, stop_event=stop)
    finally:
        done.set()


def _connect(address: str | None, num_cpus: int | None) -> bool:
    """Initialise Ray; True when this call did (and so shuts it down at the end)."""
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    else:
        ray.init(address=address)
    return True


def _on_this_node() -> dict:
    """Actor options that keep the hub beside the driver: a dying worker node takes no messages with it."""
    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 -- Ray Client has no local node: the cluster places the hub
        return {}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}


class RayBackend(Backend):
    name = "ray"

    def __init__(self, path, *, address: str | None = None, workers: int | None = None, cpus_per_run: int = 1,
                 stop_event=None, devices: tuple[str, ...] = (), max_attempts: int = MAX_ATTEMPTS):
        if isinstance(cpus_per_run, bool) or not isinstance(cpus_per_run, int) or cpus_per_run < 1:
            raise ValueError(f"cpus_per_run={cpus_per_run!r}: must be an integer >= 1")
        if address is not None and (not isinstance(address, str) or not address):
            raise ValueError(f"address={address!r}: use 'auto', 'ray://host:port' or host:port")
        self.path, self.cpus_per_run, self.stop_event = path, cpus_per_run, stop_event
        self.max_attempts = max_attempts
        t0 = time.perf_counter()
        self._owns_ray = _connect(address, None if workers is None else workers * cpus_per_run)
        self._hub = ray.remote(_Hub).options(num_cpus=0, **_on_this_node()).remote()
        ray.get(self._hub.stopping.remote(""))          # the hub is up: the start-up cost ends here
        self.startup_s = time.perf_counter() - t0
        self._task = ray.remote(_train_task)
        self._jobs: dict[Any, tuple[Job, str]] = {}        # object ref -> (job, token)
        self._receivers: dict[str, Receiver] = {}          # token -> the driver's end of that attempt
        self._tokens: dict[int, str] = {}                  # job index -> its live attempt's token
        self._stopping = False
        resources = ray.cluster_resources()
        self._cluster_gpus = int(resources.get("GPU", 0))
        if "cuda" in devices and not self._cluster_gpus:
            self.close()
            raise ValueError("device='cuda': the Ray cluster has no GPU (device='auto' uses one where there is)")
        fits = int(resources.get("CPU", 1) // cpus_per_run)
        if any(self._gpus(d) for d in devices):
            fits = min(fits, self._cluster_gpus)
        self.capacity = max(1, min(fits, workers) if workers else fits)

    def _gpus(self, device: str) -> int:
        return 1 if device == "cuda" or (device == "auto" and self._cluster_gpus > 0) else 0

    def submit(self, job: Job) -> None:
        token = f"{job.index}.{job.attempt}.{secrets.token_hex(3)}"
        receiver = Receiver(self.path, job.plan.key, job.owner)
        run = receiver.store.get_run(job.run_id) if job.run_id else None
        checkpoint = None
        if run is not None and receiver.store.checkpoint_path(job.run_id).exists():
            checkpoint = receiver.store.checkpoint_path(job.run_id).read_bytes()
        gpus = self._gpus(job.plan.config.get("device", "auto"))
        ref = self._task.options(num_cpus=self.cpus_per_run, num_gpus=gpus, max_retries=0).remote(
            job, run, checkpoint, token, self._hub, self.cpus_per_run)
        self._jobs[ref] = (job, token)
        self._receivers[token], self._tokens[job.index] = receiver, token

    def poll(self, timeout: float) -> list[tuple[Job, dict[str, Any]]]:
        if self.stop_event is not None and self.stop_event.is_set() and not self._stopping:
            self._stopping = True
            self._hub.stop.remote(None)
        if not self._jobs:
            return []
        ready, _ = ray.wait(list(self._jobs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self._jobs), num_returns=len(self._jobs), timeout=0)
        self._drain()       # a task's messages are all in the hub before its result is ready
        out = []
        for ref in ready:
            job, token = self._jobs.pop(ref)
            result = self._result(ref, job, self._receivers.pop(token))
            if result is not None:
                out.append((job, result))
        return out

    def _drain(self) -> None:
        for token, message in ray.get(self._hub.drain.remote()):
            receiver = self._receivers.get(token)
            if receiver is None or receiver.error is not None:
                continue                            # an attempt given up: its late writes go nowhere
            try:
                receiver.apply(message)
            except Exception as exc:  # noqa: BLE001 -- the run stops; its outcome says why
                receiver.error = exc
                self._hub.stop.remote(token)

    def _result(self, ref, job: Job, receiver: Receiver) -> dict[str, Any] | None:
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:      # the task itself raised: record the run failed
            result = self._failed(job, receiver, exc)
        except ray.exceptions.RayError as exc:          # its worker or node died: again, from the checkpoint
            if job.attempt < self.max_attempts and not self._stopping and receiver.error is None:
                self._again(job, receiver, exc)
                receiver.close()
                return None
            result = self._failed(job, receiver, exc)
        else:
            result["run_id"] = receiver.run_id(result["run_id"])
            if receiver.error is not None:
                result = self._failed(job, receiver, receiver.error)
        receiver.close()
        if job.attempt > 1:
            result["note"] = "; ".join(n for n in (job.note, result.get("note")) if n)
        result["attempts"] = job.attempt
        return result

    def _again(self, job: Job, receiver: Receiver, exc: BaseException) -> None:
        run = receiver.store.find_run(job.plan.key)
        note = f"attempt {job.attempt + 1} after {one_line(exc, 160)}"
        log(receiver.store, "retry", run_id=run["id"] if run else None, key=job.plan.key, owner=job.owner,
            detail=note)
        self.submit(dataclasses.replace(job, attempt=job.attempt + 1, action="resume" if run else "new",
                                        run_id=run["id"] if run else None, note=note))

    def _failed(self, job: Job, receiver: Receiver, exc: BaseException) -> dict[str, Any]:
        result = {"action": "resumed" if job.action == "resume" else job.action, "run_id": job.run_id,
                  "status": None, "reason": None, "note": None, "wall_time": 0.0}
        if isinstance(exc, LeaseLost):
            result["note"] = lost_note(exc)
            return result
        try:
            result.update(run_id=record_failure(receiver.store, job.plan, exc), status="failed",
                          reason=one_line(exc))
        except LeaseLost as lost:
            result["note"] = lost_note(lost)
        return result

    def cancel(self, job: Job) -> None:
        token = self._tokens.get(job.index)
        if token is not None:
            self._hub.stop.remote(token)

    def close(self) -> None:
        for ref in list(self._jobs):                # only after an error in the launcher
            ray.cancel(ref, force=True)
        self._jobs.clear()
        for receiver in self._receivers.values():
            receiver.close()
        ray.kill(self._hub)
        if self._owns_ray:
            ray.shutdown()
