"""The one place inference runs: a worker thread shared by every session.

Finals go before partials, and a session has at most one partial waiting: a newer one replaces
the older, whose audio is a prefix of it anyway. Under load partials thin out; finals never wait
behind them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .engine import Engine, Result
from .session import InferenceRequest

log = logging.getLogger(__name__)


class Superseded(Exception):
    """A waiting partial was replaced by a newer one of the same session."""


@dataclass
class _Job:
    request: InferenceRequest
    future: asyncio.Future[Result]
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class SchedulerStats:
    finals_done: int = 0
    partials_done: int = 0
    partials_superseded: int = 0
    busy_seconds: float = 0.0


class Scheduler:
    def __init__(self, engine: Engine, on_inference: Callable[[str, float], None] | None = None) -> None:
        self.engine = engine
        # Told (kind, seconds) after every engine call, on the worker thread: the metrics.
        self._on_inference = on_inference
        self.stats = SchedulerStats()
        self._finals: deque[_Job] = deque()
        self._partials: OrderedDict[str, _Job] = OrderedDict()  # one per session, oldest first
        self._ready = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="whisperwire-inference", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # ------------------------------------------------------------------ the event-loop side

    def submit(self, request: InferenceRequest) -> asyncio.Future[Result]:
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future(), loop)
        with self._ready:
            if request.kind == "final":
                self._finals.append(job)
                # The final covers the partial's audio: that partial would be dropped anyway.
                self._drop_partial(request.session_id)
            else:
                self._drop_partial(request.session_id)
                self._partials[request.session_id] = job
            self._ready.notify()
        return job.future

    def cancel_session(self, session_id: str) -> None:
        """The client went away: forget its waiting work (a running job finishes unseen)."""
        with self._ready:
            self._drop_partial(session_id)
            kept = deque(j for j in self._finals if j.request.session_id != session_id)
            for job in self._finals:
                if job.request.session_id == session_id:
                    job.loop.call_soon_threadsafe(job.future.cancel)
            self._finals = kept

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        with self._ready:
            return len(self._finals) + len(self._partials)

    def _drop_partial(self, session_id: str) -> None:
        job = self._partials.pop(session_id, None)
        if job is not None:
            self.stats.partials_superseded += 1
            job.loop.call_soon_threadsafe(_set_exception, job.future, Superseded())

    # ------------------------------------------------------------------ the worker side

    def _next_job(self) -> _Job | None:
        with self._ready:
            while not self._finals and not self._partials and not self._stopping:
                self._ready.wait()
            if self._finals:
                return self._finals.popleft()
            if self._partials:
                return self._partials.popitem(last=False)[1]
            return None

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            if job.future.cancelled():
                continue
            began = time.monotonic()
            try:
                result = self._run(job.request)
            except Exception as exc:  # reported to the session, which closes with 1011
                session_id = job.request.session_id
                log.exception("inference failed for session %s", session_id, extra={"session_id": session_id})
                job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
                continue
            finally:
                elapsed = time.monotonic() - began
                self.stats.busy_seconds += elapsed
                if self._on_inference is not None:
                    self._on_inference(job.request.kind, elapsed)
            if job.request.kind == "final":
                self.stats.finals_done += 1
            else:
                self.stats.partials_done += 1
            job.loop.call_soon_threadsafe(_set_result, job.future, result)

    def _run(self, request: InferenceRequest) -> Result:
        if request.detect_only:
            language, prob = self.engine.detect_language(request.audio, request.options.language_options)
            return Result(segments=(), language=language, language_prob=prob)
        return self.engine.transcribe(request.audio, request.options)


def _set_result(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Result], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
