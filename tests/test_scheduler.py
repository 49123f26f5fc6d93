"""The scheduler's order and bookkeeping, with a stand-in engine that runs one job when told.

The order of work is the scheduler's own logic; a gated stand-in makes it observable exactly
(which job runs while others wait). The real engine runs under it in tests/test_server.py.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from whisperwire.engine import DecodeOptions, ModelInfo, Result, SegmentResult, Word
from whisperwire.scheduler import DRAFTS_BELOW_BUSY, Scheduler, Superseded, transcribe
from whisperwire.session import InferenceRequest

OPTIONS = DecodeOptions(language="en")


class GatedEngine:
    """Each transcribe() call waits for release(); calls are recorded in order."""

    info = ModelInfo(name="gated", multilingual=False, languages=frozenset({"en"}))

    def __init__(self) -> None:
        self.calls: list[InferenceRequest] = []
        self.started = threading.Semaphore(0)
        self._go = threading.Semaphore(0)
        self._requests: dict[int, InferenceRequest] = {}

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def detect_language(self, audio: np.ndarray, language_options: tuple[str, ...] = ()) -> tuple[str, float]:
        return "en", 1.0

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result:
        request = self._requests[id(audio)]
        self.calls.append(request)
        self.started.release()
        assert self._go.acquire(timeout=10), "test never released the engine"
        # Some words: a partial that came back empty would be decoded once more (transcribe()).
        return Result(segments=(segment(" Gated words.", 0.0, 1.0),), language="en", language_prob=None)

    def release(self) -> None:
        self._go.release()

    def track(self, request: InferenceRequest) -> InferenceRequest:
        self._requests[id(request.audio)] = request
        return request


def request(engine: GatedEngine, session: str, kind: str, num: int = 0, seconds: float = 1.0) -> InferenceRequest:
    audio = np.zeros(int(seconds * 16_000), dtype=np.float32)
    return engine.track(InferenceRequest(session, kind, num, audio, 0.0, OPTIONS))  # type: ignore[arg-type]


async def started(engine: GatedEngine) -> InferenceRequest:
    assert await asyncio.to_thread(engine.started.acquire, True, 10)
    return engine.calls[-1]


@pytest.fixture
async def gated():
    engine = GatedEngine()
    scheduler = Scheduler(engine)
    scheduler.start()
    yield engine, scheduler
    for _ in range(20):
        engine.release()
    await asyncio.to_thread(scheduler.stop)


async def test_finals_then_drafts_then_partials_and_replaced_partials_keep_their_place(gated) -> None:
    engine, scheduler = gated
    blocker = request(engine, "z", "final")
    scheduler.submit(blocker)
    assert await started(engine) is blocker
    a1 = scheduler.submit(request(engine, "a", "partial", seconds=0.5))
    scheduler.submit(request(engine, "b", "partial"))
    a2 = request(engine, "a", "partial", seconds=1.0)  # replaces a's first, in a's place
    scheduler.submit(a2)
    draft = request(engine, "c", "draft")
    scheduler.submit(draft)
    final = request(engine, "d", "final")
    scheduler.submit(final)
    load = scheduler.load()
    assert (load.finals_waiting, load.others_waiting, load.running) == (1, 3, True)
    await asyncio.sleep(0.01)
    assert a1.done() and isinstance(a1.exception(), Superseded)
    order = []
    for _ in range(4):
        engine.release()
        order.append(await started(engine))
    assert [(r.session_id, r.kind) for r in order] == [("d", "final"), ("c", "draft"), ("a", "partial"), ("b", "partial")]
    assert order[2] is a2
    assert scheduler.stats.partials_superseded == 1


async def test_a_final_takes_over_its_waiting_draft_instead_of_running_it_again(gated) -> None:
    engine, scheduler = gated
    scheduler.submit(request(engine, "z", "final"))
    await started(engine)
    draft = request(engine, "a", "draft", seconds=2.0)
    draft_future = scheduler.submit(draft)
    same = InferenceRequest("a", "final", 0, draft.audio[:], 0.0, OPTIONS, replaces=draft.request_id)
    final_future = scheduler.submit(same)
    assert scheduler.load().finals_waiting == 1 and scheduler.load().others_waiting == 0
    engine.release()
    assert await started(engine) is draft
    engine.release()
    assert (await final_future).language == "en" and (await draft_future).language == "en"
    await asyncio.sleep(0.05)
    assert len(engine.calls) == 2 and scheduler.stats.drafts_promoted == 1


async def test_a_final_joins_its_draft_while_it_runs(gated) -> None:
    engine, scheduler = gated
    draft = request(engine, "a", "draft")
    scheduler.submit(draft)
    assert await started(engine) is draft
    final_future = scheduler.submit(InferenceRequest("a", "final", 0, draft.audio[:], 0.0, OPTIONS, replaces=draft.request_id))
    assert scheduler.load().finals_waiting == 0
    engine.release()
    await asyncio.wait_for(final_future, 10)
    assert len(engine.calls) == 1 and scheduler.stats.finals_done == 1


async def test_a_final_of_other_audio_drops_the_draft_and_a_withdrawn_draft_never_runs(gated) -> None:
    engine, scheduler = gated
    scheduler.submit(request(engine, "z", "final"))
    await started(engine)
    stale = scheduler.submit(request(engine, "a", "draft", seconds=1.0))
    scheduler.submit(request(engine, "a", "final", seconds=2.0))
    withdrawn = request(engine, "b", "draft")
    withdrawn_future = scheduler.submit(withdrawn)
    scheduler.withdraw(withdrawn)
    await asyncio.sleep(0.01)
    assert isinstance(stale.exception(), Superseded) and isinstance(withdrawn_future.exception(), Superseded)
    engine.release()
    assert (await started(engine)).kind == "final"
    engine.release()
    await asyncio.sleep(0.05)
    assert len(engine.calls) == 2 and scheduler.stats.drafts_withdrawn == 1


async def test_a_final_recognised_again_leaves_the_next_utterance_s_partial_waiting(gated) -> None:
    engine, scheduler = gated
    scheduler.submit(request(engine, "z", "final"))
    await started(engine)
    partial = request(engine, "a", "partial", num=1)
    partial_future = scheduler.submit(partial)
    again = engine.track(InferenceRequest("a", "final", 0, np.zeros(16_000, dtype=np.float32), 0.0, OPTIONS, again=True))
    again_future = scheduler.submit(again)
    order = []
    for _ in range(3):
        engine.release()
        if len(order) < 2:
            order.append(await started(engine))
    assert order == [again, partial]  # the final first, and the partial after it, not dropped
    await asyncio.wait_for(asyncio.gather(again_future, partial_future), 10)
    assert (scheduler.stats.finals_again, scheduler.stats.partials_superseded) == (1, 0)


async def test_a_draft_withdrawn_once_it_has_begun_is_counted_wasted(gated) -> None:
    engine, scheduler = gated
    running = request(engine, "a", "draft")
    scheduler.submit(running)
    assert await started(engine) is running
    scheduler.withdraw(running)  # the speech went on while it ran
    engine.release()
    finished = request(engine, "b", "draft")
    future = scheduler.submit(finished)
    engine.release()
    await asyncio.wait_for(future, 10)
    scheduler.withdraw(finished)  # it had already run
    assert (scheduler.stats.drafts_wasted, scheduler.stats.drafts_withdrawn) == (2, 0)


async def test_while_the_workers_are_busy_drafts_wait_for_their_finals_and_partials_go_first() -> None:
    engine, now = GatedEngine(), [0.0]
    scheduler = Scheduler(engine, clock=lambda: now[0])
    scheduler.start()
    try:
        scheduler.submit(request(engine, "z", "final"))
        await started(engine)
        now[0] = 8.0  # that final has kept the one worker busy for 8 of the last 10 s
        draft = request(engine, "a", "draft")
        scheduler.submit(draft)
        partial = request(engine, "b", "partial")
        scheduler.submit(partial)
        engine.release()
        assert await started(engine) is partial  # the draft waits: the worker was 80 % busy
        assert scheduler.busy_share() >= DRAFTS_BELOW_BUSY
        final = scheduler.submit(InferenceRequest("a", "final", 0, draft.audio[:], 0.0, OPTIONS, replaces=draft.request_id))
        engine.release()
        assert await started(engine) is draft  # taken over by its final, and run once, as the final
        engine.release()
        await asyncio.wait_for(final, 10)
        assert scheduler.stats.drafts_promoted == 1 and len(engine.calls) == 3
        now[0] = 30.0  # idle since: drafts run as soon as they are asked for again
        later = request(engine, "c", "draft")
        scheduler.submit(later)
        assert await started(engine) is later
    finally:
        for _ in range(5):
            engine.release()
        await asyncio.to_thread(scheduler.stop)


async def test_load_reports_how_long_the_oldest_final_has_waited(gated) -> None:
    engine, scheduler = gated
    scheduler.submit(request(engine, "z", "final"))
    await started(engine)
    assert scheduler.load().oldest_final_wait_s == 0.0
    scheduler.submit(request(engine, "a", "final"))
    await asyncio.sleep(0.2)
    assert 0.2 <= scheduler.load().oldest_final_wait_s < 5.0


# --------------------------------------------------------------------------- a skipped end


class EarlyEndEngine:
    """Ends the first decode of an utterance after its first two seconds, as Whisper sometimes
    does after a first sentence; any later decode hears one sentence, from 0.5 s to 3 s."""

    info = ModelInfo(name="early-end", multilingual=True, languages=frozenset({"en", "de"}))

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, DecodeOptions]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def detect_language(self, audio: np.ndarray, language_options: tuple[str, ...] = ()) -> tuple[str, float]:
        return "de", 0.9

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result:
        self.calls.append((audio, options))
        if len(self.calls) == 1:
            return Result(segments=(segment(" Erster Satz.", 0.0, 2.0),), language="de", language_prob=0.9)
        return Result(segments=(segment(" Der Rest.", 0.5, 3.0),), language=options.language or "de", language_prob=None)


def segment(text: str, start: float, end: float) -> SegmentResult:
    first, second = text.split()
    middle = (start + end) / 2
    words = (Word(f" {first}", start, middle, 0.9), Word(f" {second}", middle, end, 0.9))
    return SegmentResult(text, start, end, -0.2, 3, 0.01, 1.0, words)


def utterance_request(kind: str, speech_at: tuple[float, ...]) -> InferenceRequest:
    # A ramp, so that the slice the second decode gets can be told from any other.
    audio = np.arange(10 * 16_000, dtype=np.float32) / 16_000
    options = DecodeOptions(language=None, word_timestamps=True)
    return InferenceRequest("s", kind, 0, audio, 40.0, options, speech_at=speech_at)  # type: ignore[arg-type]


def windows(start: float, end: float) -> tuple[float, ...]:
    return tuple(np.arange(start, end, 0.032).round(3))


@pytest.mark.parametrize("kind", ["final", "draft"])
def test_speech_the_vad_heard_after_the_last_segment_is_decoded_once_more(kind: str) -> None:
    engine = EarlyEndEngine()
    result = transcribe(engine, utterance_request(kind, windows(0.0, 6.0)))
    assert len(engine.calls) == 2
    (whole, _), (rest, options) = engine.calls
    # The second decode gets the audio from the first one's last timestamp on, in the language
    # the first one found.
    assert len(rest) == len(whole) - 2 * 16_000 and rest[0] == whole[2 * 16_000]
    assert options.language == "de" and options.word_timestamps
    assert [(s.text, s.start, s.end) for s in result.segments] == [(" Erster Satz.", 0.0, 2.0), (" Der Rest.", 2.5, 5.0)]
    assert [(w.word, w.start, w.end) for w in result.segments[1].words or ()] == [(" Der", 2.5, 3.75), (" Rest.", 3.75, 5.0)]
    assert (result.text, result.language, result.language_prob) == ("Erster Satz. Der Rest.", "de", 0.9)


def test_silence_after_the_last_segment_is_not_decoded_again() -> None:
    # Speech until 2.9 s: 0.9 s of it after the last segment is under the one second that counts.
    engine = EarlyEndEngine()
    result = transcribe(engine, utterance_request("final", windows(0.0, 2.9)))
    assert len(engine.calls) == 1 and result.text == "Erster Satz."
    # No speech windows at all (the VAD called the stretch silence).
    engine = EarlyEndEngine()
    assert transcribe(engine, utterance_request("final", ())).text == "Erster Satz."
    assert len(engine.calls) == 1


def test_a_partial_is_not_decoded_again() -> None:
    engine = EarlyEndEngine()
    assert transcribe(engine, utterance_request("partial", windows(0.0, 6.0))).text == "Erster Satz."
    assert len(engine.calls) == 1 and engine.calls[0][1].fit_window  # in a window that fits it


class ShortWindowDeafEngine(EarlyEndEngine):
    """Hears nothing in a fitted window, the sentence in the full one."""

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result:
        self.calls.append((audio, options))
        if options.fit_window:
            return Result(segments=(), language="en", language_prob=None)
        return Result(segments=(segment(" Ask not.", 0.0, 1.0),), language="en", language_prob=None)


def test_a_partial_the_fitted_window_heard_nothing_in_is_decoded_in_30_s() -> None:
    engine = ShortWindowDeafEngine()
    assert transcribe(engine, utterance_request("partial", windows(0.0, 1.0))).text == "Ask not."
    assert [options.fit_window for _, options in engine.calls] == [True, False]
