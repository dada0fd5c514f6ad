"""The real-time shell around the sans-I/O engine: one asyncio task that steps it on a scaled clock.

Emulated time is `(loop.time() - t0) * speed`. Each iteration: `end = engine.start_step(now)`, sleep until
`end` on that clock, `engine.finish_step(end)`, then hand each request its new tokens. Three choices keep the
emulated timeline faithful to the cost model even when the event loop is a little late:
- Back to back: the next iteration starts at the previous one's `end`, as on a GPU, not at the (slightly later)
  wake-up time, unless the loop has fallen more than `max_lag_s` of real time behind; then it resynchronises.
- Monotone: a request that arrives while an iteration is in flight is queued at an emulated time no later
  than that iteration's end, and the next iteration never starts before the latest arrival.
- Bursts at high speed: when one decode iteration is shorter than `token_window_s` of real time, the engine
  plans a run of identical decode iterations (`start_step(max_run=k)`) spanning about that window, so tokens
  reach clients in bursts no longer than the window (invisible to them) and the loop's cost per token drops.
  An arrival inside a run cuts it short (`engine.interrupt`), exactly as in the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.emulator.stream import TokenStream
from llmsched.engine.engine import StepOutput

log = logging.getLogger(__name__)


class EngineLike(Protocol):
    """The part of `llmsched.engine.engine.Engine` the driver uses."""

    @property
    def has_work(self) -> bool: ...

    @property
    def busy(self) -> bool: ...

    def add(self, req: Request, now: float) -> None: ...

    def abort(self, req: Request, now: float) -> bool: ...

    def start_step(self, now: float, max_run: int = 1) -> float | None: ...

    def interrupt(self, t: float) -> float: ...

    def finish_step(self, now: float) -> StepOutput: ...

    def snapshot(self, now: float) -> InstanceSnapshot: ...


class DriverObserver(Protocol):
    """Receives what happened, for metrics (see `emulator.metrics`)."""

    def on_first_tokens(self, reqs: list[Request], now: float) -> None: ...

    def on_tokens(self, stream: TokenStream, n: int, now: float) -> None: ...

    def on_finished(self, reqs: list[Request], now: float) -> None: ...


class EngineDriver:
    """Drives one engine in real time scaled by `speed`; `submit` and `abort` are called by HTTP handlers.

    Args:
        engine: the engine model.
        speed: emulated seconds per real second (2.0 = twice real time).
        observer: metrics sink, or None.
        max_lag_s: real seconds the loop may run late before the emulated clock resynchronises to real time.
        token_window_s: real seconds a burst of decode iterations may span (0 disables runs).
    """

    def __init__(
        self,
        engine: EngineLike,
        speed: float = 1.0,
        observer: DriverObserver | None = None,
        max_lag_s: float = 0.005,
        token_window_s: float = 0.002,
    ) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.engine = engine
        self.speed = float(speed)
        self.observer = observer
        self.max_lag = max_lag_s * self.speed  # in emulated seconds
        self.token_window = token_window_s * self.speed
        self._t0 = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tick: asyncio.Future[None] | None = None
        self._end = 0.0  # end of the iteration in flight, or of the last one
        self._last_in = 0.0  # latest emulated time handed to the engine
        self._step_dur = 0.0  # duration of the last single decode-or-mixed iteration
        self._in_run = False
        self.failed: BaseException | None = None  # set when the engine loop died
        self.open: dict[int, TokenStream] = {}  # rid -> stream of every request in the engine

    # -- clock -----------------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._loop is not None

    def now(self) -> float:
        """Current emulated time in seconds since `start`."""
        assert self._loop is not None, "driver not started"
        return (self._loop.time() - self._t0) * self.speed

    def _engine_time(self) -> float:
        """An emulated time for an outside event that keeps the engine's clock monotone."""
        t = self.now()
        if self.engine.busy:
            t = min(t, self._end)
        t = max(t, self._last_in)
        self._last_in = t
        return t

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._task = self._loop.create_task(self._run(), name="llmsched-emulator-engine")

    async def stop(self) -> None:
        """Stop stepping; streams still open are closed with reason "abort"."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._timer is not None:
            self._timer.cancel()
        for s in list(self.open.values()):
            s.close("abort")
        self.open.clear()

    # -- requests in -----------------------------------------------------------------------------------
    def submit(self, req: Request) -> TokenStream:
        """Queue `req` now (its `arrival` is set here) and return the stream its tokens will arrive on.

        Raises:
            ValueError: the engine refused the request (it can never fit its KV cache).
        """
        if self.failed is not None:
            raise RuntimeError(f"the engine loop failed: {self.failed!r}")
        t = self._engine_time()
        req.arrival = t
        stream = TokenStream(req)
        req.shell_data = stream
        self.engine.add(req, t)
        self.open[req.rid] = stream
        if self._in_run:
            new_end = self.engine.interrupt(t)
            if new_end < self._end:
                self._end = new_end
                self._arm_timer()
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)
        return stream

    def abort(self, stream: TokenStream) -> None:
        """The client went away: drop the request from the engine and close its stream."""
        if stream.done:
            return
        self.engine.abort(stream.req, self._engine_time())
        self.open.pop(stream.req.rid, None)
        stream.close("abort")

    # -- the loop --------------------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        loop = self._loop
        assert loop is not None and self._tick is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(self._t0 + self._end / self.speed, _resolve, self._tick)

    async def _run(self) -> None:
        try:
            await self._steps()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in the engine or a policy: fail every request loudly, never hang them
            self.failed = e
            log.exception("emulator engine loop failed; closing %d open requests", len(self.open))
            for s in list(self.open.values()):
                s.close("error")
            self.open.clear()

    async def _steps(self) -> None:
        loop = self._loop
        assert loop is not None
        eng = self.engine
        obs = self.observer
        stats = getattr(eng, "stats", None)
        on_step = getattr(obs, "on_step", None)
        while True:
            if not eng.has_work:
                self._idle = loop.create_future()
                await self._idle
                self._idle = None
                continue
            start = max(self._end, self.now() - self.max_lag, self._last_in)
            max_run = 1
            if self.token_window > 0 and 0 < self._step_dur < self.token_window:
                max_run = int(self.token_window / self._step_dur)
            end = eng.start_step(start, max_run)
            self._last_in = start
            if end is None:  # work exists but none can be scheduled now (cannot happen with free KV)
                self._idle = loop.create_future()
                await self._idle
                self._idle = None
                continue
            self._end = end
            self._in_run = max_run > 1
            self._tick = loop.create_future()
            self._arm_timer()
            await self._tick
            self._timer = None
            self._in_run = False
            end = self._end
            prefill0 = stats.prefill_tokens if stats is not None else 0
            out = eng.finish_step(end)
            self._last_in = max(self._last_in, end)
            steps = out.steps
            if steps == 1:
                self._step_dur = end - start
            if on_step is not None:  # tokens of each iteration: prompt tokens computed + tokens sampled
                prefill = (stats.prefill_tokens - prefill0) if stats is not None else 0
                on_step(prefill + len(out.tokens), steps)
            if obs is not None and out.first_tokens:
                obs.on_first_tokens(out.first_tokens, end)
            for r in out.tokens:
                s = r.shell_data
                if s is None or s.done:
                    continue
                if obs is not None:
                    obs.on_tokens(s, steps, end)
                s.push(steps, end)
            finished = out.finished
            if finished:
                if obs is not None:
                    obs.on_finished(finished, end)
                for r in finished:
                    s = self.open.pop(r.rid, None)
                    if s is not None:
                        s.close("length")


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
