"""Where independent runs execute: inline, on a local process pool, or on a Ray cluster.

Every run is a pure function of its config (the simulator is seeded and has no clock), so the executor only
changes where and in which order results arrive, never what they are. Results are yielded as they complete,
which is what lets a sweep append each one to its log at once and resume after an interruption.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from types import TracebackType
from typing import Any, Protocol

Item = tuple[str, tuple[Any, ...]]  # (key, positional arguments)


class Executor(Protocol):
    name: str

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(self, fn: Callable[..., Any], items: Sequence[Item]) -> Iterator[tuple[str, Any]]: ...


class RunFailed(RuntimeError):
    """A run raised; the message names its key so the user can reproduce it alone."""


class LocalPool:
    """A process pool of `jobs` workers (inline when jobs <= 1, which is also what tests use to inject fakes).

    Workers start from a forkserver: forking the parent directly would copy the progress bar's thread and
    its locks; a forkserver child starts clean and still avoids re-importing numpy for every worker.
    """

    def __init__(self, jobs: int = 2) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        self.name = "inline" if jobs == 1 else f"local pool ({jobs} workers)"
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalPool:
        if self.jobs > 1:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["llmsched.bench.runner"])
            self._pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx)
        return self

    def __exit__(self, et: type[BaseException] | None = None, ev: BaseException | None = None,
                 tb: TracebackType | None = None) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=et is None, cancel_futures=True)
            self._pool = None

    def run(self, fn: Callable[..., Any], items: Sequence[Item]) -> Iterator[tuple[str, Any]]:
        if self._pool is None:
            for key, args in items:
                try:
                    yield key, fn(*args)
                except Exception as e:
                    raise RunFailed(f"run {key} failed: {type(e).__name__}: {e}") from e
            return
        pending: dict[Future[Any], str] = {self._pool.submit(fn, *args): key for key, args in items}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    key = pending.pop(fut)
                    try:
                        yield key, fut.result()
                    except Exception as e:
                        raise RunFailed(f"run {key} failed: {type(e).__name__}: {e}") from e
        finally:
            for fut in pending:
                fut.cancel()


class RayPool:
    """Runs on a Ray cluster (`address`), or on a local Ray instance for address 'local' (`ray.init()`).

    Ray is an optional extra and is imported only here. A Ray session already initialised by the caller is
    used as it is (and left running).
    """

    def __init__(self, address: str | None = "local") -> None:
        self.address = None if address in (None, "", "local") else address
        self.name = f"ray ({self.address or 'local instance'})"
        self._owned = False
        self._ray: Any = None

    def __enter__(self) -> RayPool:
        try:
            import ray
        except ImportError:
            raise RuntimeError("--ray needs the optional dependency: pip install 'llmsched[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
            self._owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned and self._ray is not None:
            self._ray.shutdown()
            self._owned = False

    def run(self, fn: Callable[..., Any], items: Sequence[Item]) -> Iterator[tuple[str, Any]]:
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = {remote.remote(*args): key for key, args in items}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    key = pending.pop(ref)
                    try:
                        yield key, ray.get(ref)
                    except Exception as e:
                        raise RunFailed(f"run {key} failed: {type(e).__name__}: {e}") from e
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
