"""Honest overload: admission by measured cost, and streams the server falls behind told and closed.

No assertion here is on wall-clock time: the capacity's clock is moved by hand, the session's lag
is counted in audio seconds, and a slowed engine only decides which comes first.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect

from tests.conftest import read_wav, start_server
from tests.streaming import s16le, stream, word_error_rate
from tests.test_faults import FaultyEngine
from tests.test_session import closes, make_session, messages, pcm, requests, result, silence, speech
from whisperwire.capacity import MIN_AUDIO_S, TARGET_BUSY, WINDOW_S, Capacity
from whisperwire.protocol import CloseCode, ErrorCode, ErrorMessage, SessionLimits

# --------------------------------------------------------------------------- capacity


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_prior_holds_until_enough_audio_is_measured_then_the_measurement_does() -> None:
    clock = Clock()
    capacity = Capacity(workers=1, prior_cost=0.1, clock=clock)
    assert capacity.streams() == 8  # 0.8 of a worker at 0.1 s per audio second
    capacity.received(MIN_AUDIO_S - 1)
    capacity.recognised(5.0)
    assert capacity.cost() == 0.1  # too little audio to say yet
    capacity.received(1.0)
    assert capacity.cost() == pytest.approx(5.0 / MIN_AUDIO_S)
    assert capacity.streams() == int(TARGET_BUSY / (5.0 / MIN_AUDIO_S))


def test_the_measurement_is_of_the_recent_window_only() -> None:
    clock = Clock()
    capacity = Capacity(workers=2, prior_cost=None, clock=clock)
    assert capacity.streams() is None  # nothing known: only the other admission rules apply
    capacity.received(40.0)
    capacity.recognised(20.0)  # 0.5 s per audio second: 2 workers hold 3 streams
    assert capacity.streams() == 3
    clock.now += WINDOW_S + 10
    capacity.received(40.0)
    capacity.recognised(2.0)  # the load got cheaper; the old window no longer counts
    assert capacity.cost() == pytest.approx(0.05) and capacity.streams() == 32


def test_silence_alone_says_nothing_of_what_speech_costs() -> None:
    capacity = Capacity(workers=1, prior_cost=0.2, clock=Clock())
    capacity.received(100.0)  # streams open, nobody speaking: no finals
    assert capacity.cost() == 0.2 and capacity.streams() == 4


def test_one_stream_is_always_held() -> None:
    capacity = Capacity(workers=1, prior_cost=5.0, clock=Clock())  # slower than real time
    assert capacity.streams() == 1


# --------------------------------------------------------------------------- lag, in the session core


def feed_live(session, audio: np.ndarray, at: float, frame_ms: int = 20) -> list:  # noqa: ANN001
    """Frames arriving as fast as they play, from ``at`` seconds."""
    data, step, events = pcm(audio), 16 * frame_ms * 2, []
    for n, i in enumerate(range(0, len(data), step)):
        events += session.receive_bytes(data[i : i + step], now=at + (n + 1) * frame_ms / 1000)
        if closes(events):
            break
    return events


def test_a_real_time_stream_the_server_falls_behind_is_told_where_its_finals_stop_and_closed_1013() -> None:
    session = make_session(limits=SessionLimits(max_lag_s=3.0))
    events = feed_live(session, np.concatenate([speech(1.0), silence(1.0)]), at=0.0)
    assert len(requests(events, "final")) == 1  # and it never comes back: the server is stuck
    events = feed_live(session, silence(5.0), at=2.0)
    [error] = messages(events)
    assert isinstance(error, ErrorMessage) and error.error.code is ErrorCode.SERVER_BEHIND
    assert "fallen 3.0 s behind this stream (limit 3 s)" in error.error.message
    assert "the audio from 0.00 s of the stream on has no final" in error.error.message
    assert closes(events)[0].code == CloseCode.TRY_AGAIN_LATER
    assert 3.0 < session.lag_s <= 3.05  # closed at the first frame past the bound, not later


def test_a_stream_whose_finals_come_back_is_never_closed_for_lag() -> None:
    session = make_session(limits=SessionLimits(max_lag_s=1.0))
    at = 0.0
    for _ in range(10):  # 20 s: ten utterances, each final back as soon as asked
        events = feed_live(session, np.concatenate([speech(1.0), silence(1.0)]), at=at)
        for request in requests(events, "final"):
            events += session.inference_done(request, result("hello there"))
        assert not closes(events)
        at += 2.0
    assert session.lag_s < 1.0


def test_a_stream_sent_faster_than_real_time_is_not_closed_for_lag() -> None:
    session = make_session(limits=SessionLimits(max_lag_s=3.0))
    events = session.receive_bytes(pcm(np.concatenate([speech(1.0), silence(9.0)])), now=0.5)
    assert session.lag_s > 8 and not closes(events)  # a file sent at full speed: behind by its choice


# --------------------------------------------------------------------------- on a real server


async def test_streams_started_together_are_admitted_only_as_far_as_the_measured_cost_allows(engine, vad) -> None:
    # A prior of 0.2 s per audio second: one worker holds 4 streams. Sixteen open at once.
    with start_server(engine, vad, stream_cost_prior=0.2) as running:
        sockets = await asyncio.gather(*(connect(running.url) for _ in range(16)))
        try:  # no metadata yet: an admitted stream waits for it; a refused one hears at once
            outcomes = await asyncio.gather(*(first_message_or_open(ws) for ws in sockets))
            refused = [o for o in outcomes if o is not None]
            assert len(refused) == 12, outcomes
            for code, error in refused:
                assert code == 1013 and error["code"] == "server_busy"
                assert "4 streams open" in error["message"] and "the server holds 4" in error["message"]
            with pytest.raises(urllib.error.HTTPError) as not_ready:
                urllib.request.urlopen(f"{running.http}/ready", timeout=5)
            assert json.loads(not_ready.value.read()) == {"ready": False, "reasons": ["at capacity"]}
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))


async def first_message_or_open(ws) -> tuple[int, dict] | None:  # noqa: ANN001
    """(close code, error) for a refused stream; None for one that stays open (no message yet)."""
    try:
        message = await asyncio.wait_for(ws.recv(), 2.0)
    except TimeoutError:
        return None
    await ws.wait_closed()
    return ws.close_code, json.loads(message)["error"]


async def test_a_stream_behind_a_stuck_engine_is_closed_1013_and_the_server_serves_the_next(engine, vad, clips) -> None:
    clip = clips["en_jfk_inaugural_11s.wav"]
    audio = s16le(np.concatenate([read_wav(clip.path), np.zeros(16_000, np.float32)]))
    stuck = {"whisper_params": {"prompt": "hang"}}  # every recognition of this stream takes 8 s
    with start_server(FaultyEngine(engine, hang_s=8.0), vad, limits=SessionLimits(max_lag_s=2.0)) as running:
        behind = await stream(running.url, stuck, audio, speed=1.0)
        [error] = behind.errors
        assert error["error"]["code"] == "server_behind" and behind.close_code == 1013
        assert "behind this stream (limit 2 s)" in error["error"]["message"]
        served = await stream(running.url, {}, audio)  # sent at full speed: never closed for lag
        # As in test_faults: served in full (a lost phrase fails), "my" and "Americans" may be misheard.
        assert served.close_code == 1000 and word_error_rate(clip.reference, served.text) <= 0.2
