"""Pick a study's backend by name: ``local`` (this machine) or ``ray`` (a Ray cluster).

Only ``backend="ray"`` imports :mod:`~lipschitz_lab.studies.ray_backend`, and so ray:
without the ``ray`` extra it raises :class:`~lipschitz_lab.studies.backend.BackendUnavailable`,
one line naming the extra.
"""
from __future__ import annotations

from lipschitz_lab.studies.backend import BACKENDS, Backend, BackendUnavailable
from lipschitz_lab.studies.local import InlineBackend, PoolBackend

__all__ = ["BACKENDS", "backend_class", "make_backend"]


def backend_class(name: str) -> type[Backend]:
    """The class behind ``backend=name``; imports ray for ``"ray"`` (BackendUnavailable without it)."""
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "local":
        return InlineBackend
    try:
        from lipschitz_lab.studies.ray_backend import RayBackend
    except ModuleNotFoundError as exc:
        if exc.name != "ray" and not (exc.name or "").startswith("ray."):
            raise
        raise BackendUnavailable("backend='ray' needs the ray package: pip install 'lipschitz-lab[ray]'") from None
    return RayBackend


def make_backend(name: str, *, path, workers: int | None, address: str | None, n_runs: int, n_todo: int,
                 stop_event=None, cpus_per_run: int = 1, devices: tuple[str, ...] = ()) -> Backend:
    """The backend ``name`` (``local`` or ``ray``) for a study of ``n_runs`` runs, ``n_todo`` to train."""
    cls = backend_class(name)
    if cls is InlineBackend:
        if address is not None:
            raise ValueError(f"address={address!r}: only backend='ray' connects to an address")
        n = 1 if workers is None else workers
        return InlineBackend(path, stop_event) if n == 1 or n_todo <= 1 else PoolBackend(path, n, n_runs, stop_event)
    return cls(path, address=address, workers=workers, cpus_per_run=cpus_per_run, stop_event=stop_event,
               devices=devices)
