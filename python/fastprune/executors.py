"""Where independent solves run: in this process, or as tasks on a Ray cluster.

Once a block's calibration statistics are gathered, the solves of the layers that read them are
independent: each needs its weight and the statistics, nothing else. An executor maps one
function over such items. :class:`SerialExecutor` calls it in turn here; :class:`RayExecutor`
submits one Ray task per item, the shared statistics put once into Ray's object store, and
gathers the results in order. Ray (``pip install "fastprune[ray]"``) is imported only when a
RayExecutor is made; with no cluster address a local Ray is started in this process.

The results do not depend on the executor: every task runs the same fastprune code on the same
arrays, and fastprune's results do not depend on the thread count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["Executor", "RayExecutor", "SerialExecutor", "executor"]

R = TypeVar("R")


class Executor(Protocol):
    """Maps ``fn(shared, *item)`` over `items`, results in the order of `items`."""

    name: str

    def map(
        self, fn: Callable[..., R], items: Sequence[tuple[Any, ...]], shared: object = None
    ) -> list[R]: ...


class SerialExecutor:
    """Runs every item here, one after another."""

    name = "serial"

    def map(
        self, fn: Callable[..., R], items: Sequence[tuple[Any, ...]], shared: object = None
    ) -> list[R]:
        return [fn(shared, *item) for item in items]


class RayExecutor:
    """Runs every item as a Ray task; `shared` goes through the object store once per call.

    Args:
        address: a Ray cluster to join (``"auto"``, ``"ray://host:port"``, ...); None starts
            a local Ray in this process unless one is already running.
        num_cpus: CPUs of a local Ray (default: all); ignored when joining a cluster.
        cpus_per_task: CPUs Ray reserves for each task (1).
    """

    name = "ray"

    def __init__(
        self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: int = 1
    ) -> None:
        msg = 'the Ray executor needs the ray extra: pip install "fastprune[ray]"'
        try:
            import ray
        except ImportError as err:
            raise ImportError(msg) from err
        if not hasattr(ray, "remote"):  # e.g. a folder named "ray" on the path, not the package
            raise ImportError(msg)
        if not isinstance(cpus_per_task, int) or cpus_per_task < 1:
            msg = f"cpus_per_task: expected a positive integer, got {cpus_per_task!r}"
            raise ValueError(msg)
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None and not os.environ.get("RAY_ADDRESS"):
                options["num_cpus"] = num_cpus  # a local Ray: how many CPUs it may use
            ray.init(address=address, **options)
        self._ray = ray
        self._cpus = cpus_per_task
        self._remote: dict[Callable[..., Any], Any] = {}

    def map(
        self, fn: Callable[..., R], items: Sequence[tuple[Any, ...]], shared: object = None
    ) -> list[R]:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._ray.remote(num_cpus=self._cpus)(fn)
            self._remote[fn] = remote
        shared_ref = self._ray.put(shared)
        refs = [remote.remote(shared_ref, *item) for item in items]
        results: list[R] = self._ray.get(refs)
        return results


def executor(spec: object = None) -> Executor:
    """An executor from `spec`: None or ``"serial"``, ``"ray"`` (a local Ray, or the cluster
    named by ``RAY_ADDRESS``), ``"ray://..."`` or ``"ray:ADDRESS"`` for a given cluster, or any
    object with a ``map`` method like :class:`Executor`'s."""
    if spec is None or spec == "serial":
        return SerialExecutor()
    if isinstance(spec, str):
        if spec == "ray":
            return RayExecutor()
        if spec.startswith("ray://"):
            return RayExecutor(address=spec)
        if spec.startswith("ray:"):
            return RayExecutor(address=spec[len("ray:") :])
        msg = f"executor: expected 'serial', 'ray', 'ray://...' or 'ray:ADDRESS', got {spec!r}"
        raise ValueError(msg)
    if callable(getattr(spec, "map", None)):
        return spec  # type: ignore[return-value]
    msg = f"executor: expected a name or an object with a map method, got {type(spec).__name__}"
    raise TypeError(msg)
