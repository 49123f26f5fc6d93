"""Finals of several streams encoded in one call when they wait together (`serve --batch`).

The scheduler's part with a gated stand-in (which finals go together, in which order), the
engine's with the real tiny.en: a batch gives each utterance exactly the words and times it gets
alone, and the encoder runs once for the batch instead of once an utterance.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from tests.test_scheduler import GatedEngine, request, started
from whisperwire.engine import DecodeOptions, WhisperEngine
from whisperwire.scheduler import Scheduler
from whisperwire.values import InferenceRequest

CLIPS = ("en_jfk_inaugural_11s.wav", "en_timit_LDC93S1.wav", "en_harvard_birch_canoe.wav")


class BatchingEngine(GatedEngine):
    """The gated stand-in with ``encode_ahead``: records each batch it is given."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.batches: list[list[InferenceRequest]] = []
        self._fail = fail

    def encode_ahead(self, calls: list[tuple[np.ndarray, DecodeOptions]]) -> None:
        self.batches.append([self._requests[id(audio)] for audio, _ in calls])
        if self._fail:
            raise RuntimeError("out of memory")


@contextlib.asynccontextmanager
async def running(engine: GatedEngine, batch: int) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(engine, batch=batch)
    scheduler.start()
    try:
        yield scheduler
    finally:
        for _ in range(20):
            engine.release()
        await asyncio.to_thread(scheduler.stop)


async def test_waiting_finals_are_taken_together_in_their_order_and_the_rest_after() -> None:
    engine = BatchingEngine()
    async with running(engine, batch=3) as scheduler:
        blocker = request(engine, "z", "final")
        scheduler.submit(blocker)
        assert await started(engine) is blocker
        finals = [request(engine, name, "final") for name in "abcd"]
        partial = request(engine, "e", "partial")
        futures = [scheduler.submit(r) for r in finals]
        scheduler.submit(partial)
        order = []
        for _ in range(5):
            engine.release()
            order.append(await started(engine))
        assert order == [*finals, partial]
        # a, b and c waited together: one batch; d came to the worker alone, with nobody to join.
        assert engine.batches == [finals[:3]]
        engine.release()
        assert [r.text for r in await asyncio.gather(*futures)] == ["Gated words."] * 4
        assert scheduler.stats.finals_done == 5


async def test_a_final_joins_its_draft_while_the_draft_waits_in_a_batch() -> None:
    engine = BatchingEngine()
    async with running(engine, batch=4) as scheduler:
        scheduler.submit(request(engine, "z", "final"))
        await started(engine)
        first = request(engine, "a", "final")
        scheduler.submit(first)
        draft = request(engine, "b", "draft", seconds=2.0)
        scheduler.submit(draft)
        promoted = InferenceRequest("b", "final", 0, draft.audio, 0.0, draft.options, replaces=draft.request_id)
        final_future = scheduler.submit(promoted)  # the draft moves up among the finals
        engine.release()
        assert await started(engine) is first
        assert engine.batches == [[first, draft]]
        later = InferenceRequest("b", "final", 0, draft.audio, 0.0, draft.options, replaces=draft.request_id)
        second_future = scheduler.submit(later)  # taken by the worker, not begun: joins, no new work
        engine.release()
        assert await started(engine) is draft
        engine.release()
        assert (await final_future).text == (await second_future).text == "Gated words."
        assert len(engine.calls) == 3


@pytest.mark.parametrize(
    ("make", "batch", "batches"),
    [(GatedEngine, 2, None), (lambda: BatchingEngine(fail=True), 2, 1), (BatchingEngine, 1, 0)],
    ids=["engine without encode_ahead", "encode_ahead fails", "batch 1"],
)
async def test_finals_are_recognised_one_by_one_where_they_are_not_batched(make, batch: int, batches: int | None) -> None:  # noqa: ANN001
    engine = make()
    async with running(engine, batch=batch) as scheduler:
        scheduler.submit(request(engine, "z", "final"))
        await started(engine)
        futures = [scheduler.submit(request(engine, name, "final")) for name in "ab"]
        for _ in range(3):
            engine.release()
        assert [r.text for r in await asyncio.gather(*futures)] == ["Gated words.", "Gated words."]
    assert len(engine.calls) == 3
    assert getattr(engine, "batches", None) is None if batches is None else len(engine.batches) == batches


def test_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch must be at least 1"):
        Scheduler(GatedEngine(), batch=0)


# --------------------------------------------------------------------------- the real model


def test_a_batch_gives_each_utterance_its_own_words_and_times_and_encodes_once(engine: WhisperEngine, clip_audio, monkeypatch) -> None:
    from faster_whisper import WhisperModel

    audios = [clip_audio(name) for name in CLIPS]
    options = DecodeOptions(language="en", word_timestamps=True)
    alone = [engine.transcribe(audio, options) for audio in audios]
    single: list[int] = []
    encode = WhisperModel.encode

    def recorded(model, features):  # noqa: ANN001, ANN202 - encodings of one utterance alone
        single.append(features.shape[-1])
        return encode(model, features)

    monkeypatch.setattr(WhisperModel, "encode", recorded)
    engine.encode_ahead([(audio, options) for audio in audios])
    together = [engine.transcribe(audio, options) for audio in reversed(audios)][::-1]
    assert single == []  # every window came from the batch
    for one, batched in zip(alone, together):
        assert batched.text == one.text and batched.text
        assert [(w.word, w.start, w.end) for s in batched.segments for w in s.words or ()] == [
            (w.word, w.start, w.end) for s in one.segments for w in s.words or ()
        ]
        assert (one.batched, batched.batched) == (1, 3)
    # Used up: the same audio again is encoded alone, and says so.
    again = engine.transcribe(audios[0], options)
    assert single == [3000] and again.batched == 1 and again.text == alone[0].text


def test_audio_a_batch_did_not_hold_is_encoded_alone(engine: WhisperEngine, clip_audio) -> None:
    jfk, timit, birch = (clip_audio(name) for name in CLIPS)
    options = DecodeOptions(language="en")
    engine.encode_ahead([(jfk, options), (timit, options)])
    result = engine.transcribe(birch, options)
    assert result.batched == 1 and "birch canoe" in result.text.lower()
    engine.encode_ahead([])  # forget the rest


async def test_the_scheduler_batches_real_finals_that_wait_together(engine: WhisperEngine, clip_audio) -> None:
    scheduler = Scheduler(engine, batch=3)
    options = DecodeOptions(language="en")
    requests = [InferenceRequest(name, "final", 0, clip_audio(name), 0.0, options) for name in CLIPS]
    futures = [scheduler.submit(r) for r in requests]  # all three wait before the worker starts
    scheduler.start()
    try:
        results = await asyncio.wait_for(asyncio.gather(*futures), 120)
    finally:
        await asyncio.to_thread(scheduler.stop)
    assert [r.batched for r in results] == [3, 3, 3] and scheduler.stats.finals_batched == 3
    assert "ask not what your country" in results[0].text.lower()
    assert "wash water" in results[1].text.lower()
    assert "birch canoe" in results[2].text.lower()
