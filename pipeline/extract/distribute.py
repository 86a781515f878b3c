"""Distributors: run a per-item function serially (tests, debugging) or as Ray tasks, same signature.

Both yield ``(index, result)`` as results arrive. The Ray distributor keeps a bounded number of
tasks in flight (memory stays bounded however many clips there are) and lets Ray re-run a task
whose worker process died (``max_retries``); exceptions raised *by* the function are not retried,
since bad input fails the same way every time (the per-clip job returns failures instead).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskError:
    """Yielded in place of a result when a task failed for good: ``step`` ``worker`` (its worker
    kept dying, or it raised) or ``timeout`` (cancelled after the distributor's timeout)."""

    message: str
    step: str = "worker"


def _on_node(fn: Callable, item: Any, *args: Any) -> tuple[str, Any]:
    """A Ray task body: ``(id of the node it ran on, fn(item, *args))``."""
    import ray

    return ray.get_runtime_context().get_node_id(), fn(item, *args)


class SerialDistributor:
    """Runs ``fn(item, *args)`` in this process, in order (exceptions propagate: use it to debug)."""

    num_workers = 1

    @property
    def tasks_per_node(self) -> Counter:
        return Counter()

    def imap_unordered(self, fn: Callable, items: Sequence, *args: Any) -> Iterator[tuple[int, Any]]:
        for i, item in enumerate(items):
            yield i, fn(item, *args)

    def close(self) -> None:
        pass


class RayDistributor:
    """Runs ``fn(item, *args)`` as Ray tasks of one CPU each.

    Args:
        address: None starts a local Ray with ``num_workers`` CPUs; ``"auto"`` or
            ``"ray://<head>:10001"`` joins a running cluster (the package must be installed on
            its nodes).
        num_workers: tasks in flight at once (one CPU each).
        max_retries: how often Ray re-runs a task whose worker process died (or whose node was lost).
        timeout_s: a task not finished this long after it was submitted (at most one more task is
            queued per worker, so this bounds queueing plus running) is cancelled (force: its worker
            is killed) and yields ``TaskError(step="timeout")``; None: no limit.
        memory_mb: Ray memory request per task (the scheduler places no more tasks on a node than
            its memory holds); 0: none.

    Attributes:
        tasks_per_node: Ray node id -> tasks that finished there (for checks and logs).
    """

    def __init__(self, address: str | None = None, num_workers: int = 2, max_retries: int = 3,
                 timeout_s: float | None = None, memory_mb: int = 0):
        import ray

        self.num_workers = num_workers
        self.max_retries = max_retries
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self.tasks_per_node: Counter = Counter()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            # address None: always a new local instance ("local"), never a cluster a stale
            # /tmp/ray/ray_current_cluster file points to
            local = {"num_cpus": num_workers, "include_dashboard": False} if address is None else {}
            ray.init(address=address or "local", log_to_driver=False, configure_logging=False, **local)

    def imap_unordered(self, fn: Callable, items: Sequence, *args: Any) -> Iterator[tuple[int, Any]]:
        import ray

        options = {"num_cpus": 1, "max_retries": self.max_retries}
        if self.memory_mb:
            options["memory"] = self.memory_mb * 2**20
        remote = ray.remote(**options)(_on_node)
        pending: dict[Any, tuple[int, float]] = {}  # ref -> (item index, submitted at)
        next_item = 0
        window = 2 * self.num_workers
        while next_item < len(items) or pending:
            while next_item < len(items) and len(pending) < window:
                # fn and args travel inside each task spec (small: a config, paths), not as ray.put objects
                # owned by this driver, which a process that ran an earlier Ray session can fail to serve
                pending[remote.remote(fn, items[next_item], *args)] = (next_item, time.monotonic())
                next_item += 1
            done, _ = ray.wait(list(pending), num_returns=1, timeout=None if self.timeout_s is None else 1.0)
            if self.timeout_s is not None:
                now = time.monotonic()
                for ref in [r for r, (_, since) in pending.items() if r not in done and now - since > self.timeout_s]:
                    index, _ = pending.pop(ref)
                    ray.cancel(ref, force=True)
                    yield index, TaskError(f"no result after {self.timeout_s:g} s: cancelled", step="timeout")
            for ref in done:
                index, _ = pending.pop(ref)
                try:
                    node, result = ray.get(ref)
                except Exception as err:  # RayTaskError, WorkerCrashedError after max_retries, ...
                    cause = getattr(err, "cause", None) or err  # RayTaskError wraps the task's exception
                    yield index, TaskError(f"{type(err).__name__}: {type(cause).__name__}: {cause}".splitlines()[0])
                    continue
                self.tasks_per_node[node] += 1
                yield index, result

    def close(self) -> None:
        import ray

        if self._owns_ray:
            ray.shutdown()


def make_distributor(address: str | None, num_workers: int, max_retries: int, serial: bool = False,
                     timeout_s: float | None = None, memory_mb: int = 0):
    """``SerialDistributor`` when ``serial`` (no timeout: it runs in this process), else a ``RayDistributor``."""
    return SerialDistributor() if serial else RayDistributor(address, num_workers, max_retries, timeout_s, memory_mb)
