"""Coverage: the VAD says when a final is due, not which audio Whisper hears.

The endpointer alone under random probabilities (every sample between two utterances is covered
once, unless it lies further back than the look-back and held no speech), then the real Silero
VAD and tiny.en through the session: speech the VAD scores under its threshold still reaches
the final.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.streaming import word_error_rate, words
from whisperwire.endpointer import (
    COVERAGE_LOOKBACK_S,
    Due,
    Endpointer,
    EndpointSettings,
)
from whisperwire.scheduler import transcribe
from whisperwire.session import CancelInference, RunInference, SendMessage, Session
from whisperwire.values import SAMPLE_RATE, WINDOW_SAMPLES

W = WINDOW_SAMPLES
RATE = SAMPLE_RATE


def _settings(lookback_windows: int, max_windows: int) -> EndpointSettings:
    return EndpointSettings(
        threshold=0.5, min_silence=10 * W, pad=2 * W, max_samples=max_windows * W,
        partial_interval=None, drafts=False, lookback=lookback_windows * W,
    )


# Runs of one probability: long quiet stretches, soft speech, loud speech, in any order.
_runs = st.lists(st.tuples(st.sampled_from([0.0, 0.05, 0.2, 0.35, 0.45, 0.6, 0.9]), st.integers(1, 80)), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(runs=_runs, lookback=st.integers(0, 90), max_windows=st.sampled_from([60, 200, 940]), finalize=st.booleans())
def test_every_sample_between_utterances_is_covered_once(
    runs: list[tuple[float, int]], lookback: int, max_windows: int, finalize: bool
) -> None:
    probs = [p for p, n in runs for _ in range(n)]
    endpointer = Endpointer(_settings(lookback, max_windows))
    finals: list[Due] = []
    for i, prob in enumerate(probs):
        finals += [d for d in endpointer.window(i * W, prob, earliest=0) if isinstance(d, Due) and d.kind == "final"]
    end = len(probs) * W
    if finalize:
        finals += [d for d in endpointer.end_now(end, earliest=0) if isinstance(d, Due)]
    # In order, never overlapping, numbered without a gap.
    assert [d.num for d in finals] == list(range(len(finals)))
    for d in finals:
        assert 0 <= d.start < d.end <= end
        assert d.end - d.start <= max_windows * W
    for before, after in itertools.pairwise(finals):
        assert after.start >= before.end
        if after.start > before.end:
            # A gap only where the look-back stopped it: no window in it was speech, and it lies
            # at least the look-back before the window that opened the next utterance (or, for
            # soft speech recognised at a flush, before the flush).
            gap = probs[before.end // W : after.start // W]
            assert all(p < 0.5 for p in gap)
            opened = after.speech[0] if after.speech else after.end
            assert opened - after.start >= min(lookback, max_windows // 2) * W  # half the limit at most
    # Every window the VAD scored as speech is in a final, once an utterance is flushed.
    if finalize:
        covered = np.zeros(len(probs), dtype=int)
        for d in finals:
            covered[d.start // W : -(-d.end // W)] += 1
        assert covered.max(initial=0) <= 1
        assert all(covered[i] for i, p in enumerate(probs) if p >= 0.5)


def test_an_hour_of_silence_is_not_handed_over() -> None:
    endpointer = Endpointer(_settings(lookback_windows=60, max_windows=940))
    quiet = 3600 * RATE // W
    for i in range(quiet):
        assert endpointer.window(i * W, 0.0, earliest=0) == []
    assert endpointer.hold_from(quiet * W) == (quiet - 60) * W  # what the session keeps
    found = []
    for i in range(quiet, quiet + 40):
        found += endpointer.window(i * W, 0.9 if i < quiet + 20 else 0.0, earliest=(quiet - 60) * W)
    [final] = [d for d in found if isinstance(d, Due)]
    assert final.start == (quiet - 60) * W  # the look-back before the speech, no more


def test_soft_speech_before_the_trigger_and_at_a_flush_reaches_a_final() -> None:
    endpointer = Endpointer(_settings(lookback_windows=60, max_windows=940))
    # Forty windows of soft speech (under the threshold), then loud speech, then silence.
    probs = [0.0] * 100 + [0.3] * 40 + [0.9] * 20 + [0.0] * 12
    found = []
    for i, prob in enumerate(probs):
        found += endpointer.window(i * W, prob, earliest=0)
    [final] = [d for d in found if isinstance(d, Due)]
    assert final.start == 80 * W  # 60 windows before the trigger at 140: all the soft speech
    # Soft speech after the last final, then finalize: recognised, not dropped.
    for i in range(len(probs), len(probs) + 30):
        endpointer.window(i * W, 0.3, earliest=0)
    [tail] = endpointer.end_now((len(probs) + 30) * W, earliest=0)
    assert (tail.num, tail.start, tail.speech) == (1, final.end, ())
    # Silence alone after a final gives nothing at a flush.
    assert endpointer.end_now((len(probs) + 40) * W, earliest=0) == []


def _stream(engine, vad, audio: np.ndarray, metadata: str = "{}") -> list[dict]:
    """Stream through the session in 20 ms frames at a real-time clock, recognising each request
    as soon as it is asked for: the server's path, deterministic."""
    session = Session("cover", model=engine.info, count_tokens=engine.count_tokens, new_vad=vad.new_stream, draft_finals=True, vad_batch=3)
    finals: list[dict] = []

    def handle(events: list) -> None:
        wanted = []
        for event in events:
            if isinstance(event, RunInference):
                wanted.append(event.request)
            elif isinstance(event, CancelInference):
                wanted = [r for r in wanted if r is not event.request]
            elif isinstance(event, SendMessage) and getattr(event.message, "is_final", False):
                finals.append(json.loads(event.message.model_dump_json()))
        for request in wanted:
            handle(session.inference_done(request, transcribe(engine, request)))

    handle(session.receive_text(metadata, 0.0))
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    for i in range(0, len(pcm), 640):
        handle(session.receive_bytes(pcm[i : i + 640], i / 32_000))
    handle(session.receive_text('{"terminate_session": true}', len(pcm) / 32_000))
    return finals


def test_speech_the_vad_scores_under_its_threshold_reaches_the_final(engine, vad, clip_audio) -> None:
    # With threshold 0.9, Silero scores all of JFK's first 6 s under it ("And so my fellow
    # Americans, ask not" stays at 0.5-0.89): speech the VAD misses, as it misses soft or
    # telephone-band speech at 0.5. The utterance opens on "what your country" at 6.1 s.
    audio = np.concatenate([clip_audio("en_jfk_inaugural_11s.wav"), np.zeros(RATE, np.float32)])
    probs = vad.new_stream().probabilities(audio[: len(audio) // W * W])
    first = int(np.argmax(probs >= 0.9)) * W / RATE
    # The VAD misses the first six seconds; the look-back from where it hears speech reaches 0.
    assert 6.0 <= first <= COVERAGE_LOOKBACK_S
    finals = _stream(engine, vad, audio, json.dumps({"streaming_vad_config": {"threshold": 0.9}}))
    text = " ".join(m["transcript"] for m in finals)
    assert words(text)[:7] == ["and", "so", "my", "fellow", "americans", "ask", "not"], text
    reference = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    assert word_error_rate(reference, text) <= 0.1, text
    starts = [m["segments"][0]["start_time"] for m in finals if m["segments"]]
    assert starts == sorted(starts) and starts[0] < 0.5  # times from the stream's start
