"""The one place inference runs: a worker thread shared by every session.

Finals go before partials, and a session has at most one partial waiting: a newer one replaces
the older, whose audio is a prefix of it anyway. Under load partials thin out; finals never wait
behind them.

One worker suits an engine in this process, which uses every core inside one call. An engine
that forwards to other machines (the Ray Serve recognizers) wants several calls in flight: give
it ``workers`` threads, all taking jobs in the same order; a session still has at most one
partial running.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
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
    def __init__(self, engine: Engine, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.engine = engine
        self.workers = workers
        self.stats = SchedulerStats()
        self._finals: deque[_Job] = deque()
        self._partials: OrderedDict[str, _Job] = OrderedDict()  # one per session, oldest first
        self._partials_running: set[str] = set()  # sessions with a partial on a worker
        self._ready = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if not self._threads:
            self._stopping = False
            self._threads = [
                threading.Thread(target=self._work, name=f"whisperwire-inference-{n}", daemon=True)
                for n in range(self.workers)
            ]
            for thread in self._threads:
                thread.start()

    def stop(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []

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
            while True:
                if self._finals:
                    return self._finals.popleft()
                if (job := self._take_partial()) is not None:
                    return job
                if self._stopping:
                    return None
                self._ready.wait()

    def _take_partial(self) -> _Job | None:
        # With several workers, a session's newer partial waits for its running one rather than
        # running beside it: the older is stale once the newer is done, and only held a worker.
        for session_id in self._partials:
            if session_id not in self._partials_running:
                self._partials_running.add(session_id)
                return self._partials.pop(session_id)
        return None

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                self._do(job)
            finally:
                if job.request.kind == "partial":
                    with self._ready:
                        self._partials_running.discard(job.request.session_id)
                        self._ready.notify_all()

    def _do(self, job: _Job) -> None:
        if job.future.cancelled():
            return
        began = time.monotonic()
        try:
            result = self._run(job.request)
        except Exception as exc:  # reported to the session, which closes with 1011
            log.exception("inference failed for session %s", job.request.session_id)
            job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
            return
        finally:
            with self._ready:  # several workers may finish at once
                self.stats.busy_seconds += time.monotonic() - began
        with self._ready:
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
