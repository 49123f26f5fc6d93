"""The one place inference runs: worker threads shared by every session.

Finals go first, then drafts (finals asked for during the silence window), then partials. A
session has at most one draft or partial waiting: a newer one takes the older one's place in
the queue, so under load each session's partials come less often instead of piling up, and no
session is pushed to the back each time it asks again. A final whose exact audio is already
waiting or running as a draft reuses that work instead of repeating it.

Give it ``workers`` threads, all taking jobs in the same order: one per model replica of an
engine in this process (`whisperwire serve --workers`), or as many calls as should be in
flight to an engine that forwards to other machines (the Ray Serve recognizers). A session
still has at most one draft or partial running, since its newer one makes the older stale.

With ``batch`` above 1, a worker that takes a final also takes the finals waiting right behind
it, up to ``batch`` in all, and has the engine encode their first windows in one call
(``encode_ahead``, where the engine has it) before decoding them one after the other. Only what
already waits is batched: a final never waits for others to come.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import context, guards
from .values import SAMPLE_RATE, DecodeOptions, Engine, InferenceRequest, Result, Timing

log = logging.getLogger(__name__)

# Drafts wait for their final while the workers were busy more than this share of the last
# BUSY_WINDOW_S: under load a draft begun in a moment of idleness holds a worker that the finals
# arriving next need, and a quarter of the drafts begun at eight streams were wasted (the speech
# went on). A waiting draft is not lost: its final takes it over. BENCHMARKS.md, Capacity.
DRAFTS_BELOW_BUSY = 0.7
BUSY_WINDOW_S = 10.0


class Superseded(Exception):
    """A waiting partial or draft was replaced, withdrawn, or taken over by a final."""


@dataclass
class _Job:
    request: InferenceRequest
    futures: list[tuple[asyncio.Future[Result], asyncio.AbstractEventLoop]]
    queued_at: float
    started_at: float = 0.0
    final: bool = False  # a final, or a draft a final took over
    other: bool = False  # taken from the drafts and partials: holds its session's one slot
    began: bool = False  # its recognition has started (a batch's later finals wait on their worker)
    shared_s: float = 0.0  # its share of the batch's encoding, done before it began

    @property
    def batchable(self) -> bool:
        return self.final and not self.request.detect_only  # a partial owed before its final is not one


@dataclass
class SchedulerStats:
    finals_done: int = 0
    partials_done: int = 0
    partials_superseded: int = 0
    drafts_promoted: int = 0  # drafts that became their utterance's final
    drafts_withdrawn: int = 0  # dropped before running: the speech went on
    drafts_wasted: int = 0  # the speech went on after the draft had begun running
    finals_batched: int = 0  # finals whose first encoder window was encoded with other finals'
    finals_again: int = 0  # finals recognised again on their own audio (guards.hear_alone)


@dataclass(frozen=True)
class SchedulerLoad:
    """A snapshot of the queue, for admission control and metrics."""

    finals_waiting: int
    others_waiting: int  # partials and drafts
    oldest_final_wait_s: float  # how long the oldest waiting final has waited; 0 if none
    running: int  # jobs on a worker now


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        on_inference: Callable[[str, float], None] | None = None,
        workers: int = 1,
        clock: Callable[[], float] = time.monotonic,
        batch: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.engine = engine
        self.workers = workers
        self.batch = batch
        self.clock = clock  # what queue waits are measured with (tests move it by hand)
        # Told (kind, seconds) after every engine call, on the worker thread: the metrics.
        self._on_inference = on_inference
        self.stats = SchedulerStats()
        self._finals: deque[_Job] = deque()
        self._others: OrderedDict[str, _Job] = OrderedDict()  # one per session, in queue order
        self._running: list[_Job] = []
        self._others_running: set[str] = set()  # sessions with a draft or partial on a worker
        self._busy: deque[tuple[float, float]] = deque()  # (started, ended) of recent engine calls
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
        future: asyncio.Future[Result] = loop.create_future()
        with self._ready:
            if request.before_final:  # a partial owed before its final: in the finals' queue
                self._finals.append(_Job(request, [(future, loop)], self.clock()))
            elif request.kind == "final":
                self._submit_final(request, future, loop)
            else:
                self._submit_other(request, future, loop)
            self._ready.notify()
        return future

    def _submit_final(
        self, request: InferenceRequest, future: asyncio.Future[Result], loop: asyncio.AbstractEventLoop
    ) -> None:
        for running in self._running:
            if running.request.request_id == request.replaces:
                running.futures.append((future, loop))  # its draft is being recognised right now
                running.final = True
                self.stats.drafts_promoted += 1
                return
        waiting = self._others.get(request.session_id)
        if waiting is not None and waiting.request.request_id == request.replaces:
            del self._others[request.session_id]  # the draft moves up among the finals
            waiting.futures.append((future, loop))
            waiting.final = True
            self._finals.append(waiting)
            self.stats.drafts_promoted += 1
            return
        # The final covers a waiting partial's audio: that partial would be dropped anyway. (A
        # final recognised again comes after its utterance: the next one's partial is not its.)
        if waiting is not None and waiting.request.transcription_num == request.transcription_num:
            self._drop_other(request.session_id)
        self._finals.append(_Job(request, [(future, loop)], self.clock(), final=True))

    def _submit_other(
        self, request: InferenceRequest, future: asyncio.Future[Result], loop: asyncio.AbstractEventLoop
    ) -> None:
        job = _Job(request, [(future, loop)], self.clock())
        older = self._others.get(request.session_id)
        if older is not None:
            job.queued_at = older.queued_at
            self._supersede(older)
        self._others[request.session_id] = job  # an existing key keeps its place in the order

    def withdraw(self, request: InferenceRequest) -> None:
        """Drop a waiting draft or partial that is no longer wanted (one already running runs)."""
        with self._ready:
            job = self._others.get(request.session_id)
            if job is not None and job.request.request_id == request.request_id:
                del self._others[request.session_id]
                if request.kind == "draft":
                    self.stats.drafts_withdrawn += 1
                self._supersede(job)
            elif request.kind == "draft":
                self.stats.drafts_wasted += 1  # it ran, or is running, for nothing

    def cancel_session(self, session_id: str) -> None:
        """The client went away: forget its waiting work (a running job finishes unseen)."""
        with self._ready:
            self._drop_other(session_id)
            kept = deque(j for j in self._finals if j.request.session_id != session_id)
            for job in self._finals:
                if job.request.session_id == session_id:
                    for future, loop in job.futures:
                        _post(loop, future.cancel)
            self._finals = kept

    def load(self) -> SchedulerLoad:
        with self._ready:
            oldest = self.clock() - self._finals[0].queued_at if self._finals else 0.0
            return SchedulerLoad(
                finals_waiting=len(self._finals),
                others_waiting=len(self._others),
                oldest_final_wait_s=oldest,
                running=len(self._running),
            )

    @property
    def running(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    @property
    def queue_depth(self) -> int:
        with self._ready:
            return len(self._finals) + len(self._others)

    def _drop_other(self, session_id: str) -> None:
        job = self._others.pop(session_id, None)
        if job is not None:
            self._supersede(job)

    def _supersede(self, job: _Job) -> None:
        if job.request.kind == "partial":
            self.stats.partials_superseded += 1
        for future, loop in job.futures:
            _post(loop, _set_exception, future, Superseded())

    # ------------------------------------------------------------------ the worker side

    def _next_jobs(self) -> list[_Job] | None:
        with self._ready:
            while True:
                if self._finals:
                    jobs = [self._finals.popleft()]
                    while len(jobs) < self.batch and self._finals and jobs[0].batchable and self._finals[0].batchable:
                        jobs.append(self._finals.popleft())
                elif (session_id := self._first_other()) is not None:
                    jobs = [self._others.pop(session_id)]
                    jobs[0].other = True
                    self._others_running.add(session_id)
                elif self._stopping:
                    return None
                else:
                    self._ready.wait()
                    continue
                now = self.clock()
                for job in jobs:  # running: a final that replaces one of them joins it
                    job.started_at = now
                    self._running.append(job)
                jobs[0].began = True
                return jobs

    def _first_other(self) -> str | None:
        # Drafts before partials: a draft is a final that is almost due, unless the workers are
        # busy (DRAFTS_BELOW_BUSY). With several workers a session's next one waits for its
        # running one rather than running beside it.
        free = [(sid, job) for sid, job in self._others.items() if sid not in self._others_running]
        drafts = self._busy_share() < DRAFTS_BELOW_BUSY
        for session_id, job in free:
            if job.request.kind == "draft" and drafts:
                return session_id
        return next((sid for sid, job in free if job.request.kind != "draft"), None)

    def busy_share(self) -> float:
        """The share of the last BUSY_WINDOW_S the workers spent in the engine."""
        with self._ready:
            return self._busy_share()

    def _busy_share(self) -> float:
        now = self.clock()
        since = now - BUSY_WINDOW_S
        while self._busy and self._busy[0][1] <= since:
            self._busy.popleft()
        spans = [*self._busy, *((job.started_at, now) for job in self._running if job.began)]
        busy = sum(end - max(start, since) for start, end in spans)
        return busy / (BUSY_WINDOW_S * self.workers)

    def _work(self) -> None:
        while (jobs := self._next_jobs()) is not None:
            if len(jobs) > 1:
                self._encode_ahead(jobs)
            for job in jobs:
                self._do(job)

    def _encode_ahead(self, jobs: list[_Job]) -> None:
        """The first windows of a batch's finals encoded in one engine call, where it can."""
        encode_ahead = getattr(self.engine, "encode_ahead", None)
        live = [job for job in jobs if not all(future.cancelled() for future, _ in job.futures)]
        if encode_ahead is None or len(live) < 2:
            return
        began = time.monotonic()
        try:
            encode_ahead([(job.request.audio, job.request.options) for job in live])
        except Exception:  # each final is then encoded alone, as without batching
            log.exception("encoding %d finals in one batch failed", len(live))
        share = (time.monotonic() - began) / len(live)
        for job in live:
            job.shared_s = share

    def _do(self, job: _Job) -> None:
        if all(future.cancelled() for future, _ in job.futures):
            self._finish(job, _set_exception, Superseded())
            return
        if not job.began:  # a batch's later final: its turn on the worker comes now
            job.started_at, job.began = self.clock(), True
        began, started_at = time.monotonic(), job.started_at
        waited = started_at - job.queued_at
        try:
            result = self._run(job.request)
            result = replace(result, timing=Timing(job.queued_at, started_at, self.clock(), result.encode_s))
        except Exception as exc:  # reported to the session, which closes with 1011
            session_id = job.request.session_id
            log.exception("inference failed for session %s", session_id, extra={"session_id": session_id})
            self._finish(job, _set_exception, exc)
            return
        finally:
            ran = time.monotonic() - began + job.shared_s
            if self._on_inference is not None:
                self._on_inference("final" if job.final else job.request.kind, ran)
        log.debug(
            "%s %s #%d: %.2f s of audio, waited %.3f s, ran %.3f s (batch of %d)",
            job.request.kind, job.request.session_id, job.request.transcription_num,
            len(job.request.audio) / SAMPLE_RATE, waited, ran, result.batched,
        )
        self._count(job, result)
        self._finish(job, _set_result, result)

    def _finish(self, job: _Job, setter, value) -> None:  # noqa: ANN001 - _set_result or _set_exception
        # One step under the lock: a final joining the running job either makes it into this
        # list of futures or finds no running job and queues work of its own.
        with self._ready:
            self._running.remove(job)
            if job.began:
                self._busy.append((job.started_at, self.clock()))
            if job.other:
                self._others_running.discard(job.request.session_id)
                self._ready.notify_all()  # its session's next draft or partial may run now
            for future, loop in job.futures:
                _post(loop, setter, future, value)

    def _count(self, job: _Job, result: Result) -> None:
        with self._ready:
            self._count_locked(job, result)

    def _count_locked(self, job: _Job, result: Result) -> None:
        kind = job.request.kind
        if job.final:
            self.stats.finals_done += 1
            self.stats.finals_batched += result.batched > 1
            self.stats.finals_again += job.request.again
        elif kind == "partial":
            self.stats.partials_done += 1

    def _run(self, request: InferenceRequest) -> Result:
        if request.detect_only:
            language, prob = self.engine.detect_language(request.audio, request.options.language_options)
            return Result(segments=(), language=language, language_prob=prob)
        return transcribe(self.engine, request)


def transcribe(engine: Engine, request: InferenceRequest) -> Result:
    """The engine's result for a draft or final: its left context cut off (context.py), and a
    skipped end decoded again (once).

    Here rather than in an engine so that every engine, a remote one too, gets it. Partials do
    without: the next partial or the final is decoded anew anyway; and they are encoded in a
    window that fits their audio, since what they show is replaced by the final.
    """
    if request.kind == "partial":
        fitted = engine.transcribe(request.audio, replace(request.options, fit_window=True))
        # A short utterance can come back empty from a short window ("ask not" from 10 s) where
        # the 30 s one hears it: then once more, as Whisper was trained.
        return fitted if fitted.segments else engine.transcribe(request.audio, request.options)
    # Word times always: the context is cut by them, and the session keeps the words it sent
    # (context.SentWords); messages carry them only when the client asked.
    options = replace(request.options, word_timestamps=True)
    result = engine.transcribe(request.audio, options)
    if options.prefix is not None:
        after = context.after_prefix(request, result)
        result = context.cut(request, result) if after is None else after
    elif request.context_s > 0:
        result = context.cut(request, result)
    elif not result.segments:
        return result  # Whisper heard no words: nothing was skipped
    return _skipped_end(engine, request, replace(options, prefix=None), result)


def _skipped_end(engine: Engine, request: InferenceRequest, options: DecodeOptions, result: Result) -> Result:
    """The result with the speech after its last word decoded again, if the VAD heard enough."""
    covered = request.context_s
    if result.segments:
        last = result.segments[-1]
        # The last word's end where there are words: a segment's end token can claim seconds
        # that its words never reached.
        covered = last.words[-1].end if last.words else last.end
    heard = guards.uncovered_speech_s(request, covered)
    if heard < guards.RECOVER_MIN_SPEECH_S:
        return result
    log.debug(
        "%s %s #%d: %.1f s of speech after the last segment (%.2f s), decoding it again",
        request.kind, request.session_id, request.transcription_num, heard, covered,
    )
    # The language found for the whole utterance holds for its end too.
    options = replace(options, language=options.language or result.language)
    rest = engine.transcribe(request.audio[round(covered * SAMPLE_RATE) :], options)
    encode_s = None if result.encode_s is None or rest.encode_s is None else result.encode_s + rest.encode_s
    segments = result.segments + tuple(guards.shifted(s, covered) for s in rest.segments)
    return replace(result, segments=segments, encode_s=encode_s)


def _post(loop: asyncio.AbstractEventLoop, callback, *args: object) -> None:  # noqa: ANN001
    # A loop that has closed (its server stopped) has nobody left waiting for the result.
    if not loop.is_closed():
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # closed in between
            pass


def _set_result(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Result], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
