"""/v1/realtime?intent=transcription, driven by the official `openai` SDK's Realtime client
against a real server on loopback: a transcription session's events, its words, and its errors."""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import websockets

from tests.conftest import read_wav, start_server
from tests.snippets import run_snippet
from tests.streaming import TURN_WER_BOUND, resample, s16le, until, word_error_rate

KEY = "realtime-test-key"
CLIP = "en_jfk_padded_3s_5s_silence.wav"  # speech between silences: several turns
CHUNK = 4_800  # 200 ms at 24 kHz


@pytest.fixture(scope="module")
def keyed(engine, vad):
    with start_server(engine, vad, api_keys=(KEY,)) as running:
        yield running


def client(server, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.http}/v1", api_key=key, max_retries=0)


def pcm24k(path: Path) -> bytes:
    return s16le(resample(read_wav(path), 24_000))


def transcription_session(**audio_input: Any) -> dict[str, Any]:
    """A GA transcription session object, as the SDK's users write it."""
    audio_input.setdefault("format", {"type": "audio/pcm", "rate": 24_000})
    audio_input.setdefault("transcription", {"model": "whisper-1", "language": "en"})
    return {"type": "transcription", "audio": {"input": audio_input}}


class Events:
    """Every event the server sent, read in the background, by type."""

    def __init__(self, connection) -> None:  # noqa: ANN001 - the SDK's AsyncRealtimeConnection
        self.all: list[Any] = []
        self._task = asyncio.create_task(self._read(connection))

    async def _read(self, connection) -> None:  # noqa: ANN001
        try:
            async for event in connection:
                self.all.append(event)
        except (openai.OpenAIError, websockets.ConnectionClosed):
            pass

    def of(self, kind: str) -> list[Any]:
        return [e for e in self.all if e.type == kind]

    @property
    def closed(self) -> bool:
        return self._task.done()

    def stop(self) -> None:
        self._task.cancel()


async def send_audio(connection, audio: bytes) -> None:  # noqa: ANN001
    for offset in range(0, len(audio), 2 * CHUNK):
        await connection.input_audio_buffer.append(audio=base64.b64encode(audio[offset : offset + 2 * CHUNK]).decode())


async def test_turns_with_server_vad_come_as_items_with_the_clip_s_words(keyed, clips) -> None:
    clip = clips[CLIP]
    async with client(keyed).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        events = Events(connection)
        await until(lambda: events.of("session.created"), "session.created")
        turns = {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 300, "prefix_padding_ms": 30}
        await connection.session.update(session=transcription_session(turn_detection=turns))
        await send_audio(connection, pcm24k(clip.path))
        await connection.input_audio_buffer.commit()

        def text() -> str:
            return " ".join(e.transcript for e in events.of("conversation.item.input_audio_transcription.completed"))

        def done() -> bool:
            started = {e.item_id for e in events.of("input_audio_buffer.speech_started")}
            completed = {e.item_id for e in events.of("conversation.item.input_audio_transcription.completed")}
            return bool(started) and started <= completed and word_error_rate(clip.reference, text()) <= 0.15

        await until(done, "every turn completed with the clip's words", limit_s=120)
        events.stop()
    assert [e.type for e in events.all[:2]] == ["session.created", "session.updated"]
    assert events.all[1].session.type == "transcription"
    items = [e.item_id for e in events.of("input_audio_buffer.speech_started")]
    assert len(items) >= 2 and len(set(items)) == len(items)  # JFK's pauses end turns
    # Each item: started, stopped, committed, delta, completed, in that order.
    for item in items:
        kinds = [e.type for e in events.all if getattr(e, "item_id", None) == item]
        assert kinds in (
            ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
             "conversation.item.input_audio_transcription.delta", "conversation.item.input_audio_transcription.completed"],
            ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
             "conversation.item.input_audio_transcription.completed"],  # a turn that held no words
        ), (item, kinds)
    # Times are of the stream's audio: speech starts after the 3 s of leading silence, ends before the trailing 5 s.
    starts = [e.audio_start_ms for e in events.of("input_audio_buffer.speech_started")]
    stops = [e.audio_end_ms for e in events.of("input_audio_buffer.speech_stopped")]
    assert 2_500 <= starts[0] and stops[-1] <= 14_500 and starts == sorted(starts), (starts, stops)
    committed = events.of("input_audio_buffer.committed")
    # Each names the item committed before it (a number whose turn held no words is skipped).
    assert [c.previous_item_id for c in committed] == [None] + [c.item_id for c in committed[:-1]]
    assert not events.of("error")


async def test_without_turn_detection_each_commit_ends_one_item(keyed, clips) -> None:
    sentences = [clips["en_harvard_birch_canoe.wav"], clips["en_timit_LDC93S1.wav"]]
    async with client(keyed).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        events = Events(connection)
        await connection.session.update(session=transcription_session(turn_detection=None))
        for clip in sentences:
            await send_audio(connection, pcm24k(clip.path))
            await connection.input_audio_buffer.commit()
        await connection.input_audio_buffer.commit()  # nothing said since the last one

        def completed() -> list[Any]:
            return events.of("conversation.item.input_audio_transcription.completed")

        await until(lambda: len(completed()) == 2 and events.of("error"), "two items and an error", limit_s=120)
        events.stop()
    for clip, item in zip(sentences, completed()):
        assert word_error_rate(clip.reference, item.transcript) <= TURN_WER_BOUND[clip.path.name], item.transcript
    assert not events.of("input_audio_buffer.speech_started")  # no server VAD events were asked for
    assert [e.item_id for e in events.of("input_audio_buffer.committed")] == [e.item_id for e in completed()]
    [error] = events.of("error")
    assert error.error.code == "input_audio_buffer_commit_empty"


async def test_a_cleared_turn_is_not_transcribed(keyed, clips) -> None:
    cleared, kept = clips["en_lovecraft_dagon_reading.wav"], clips["en_harvard_birch_canoe.wav"]
    async with client(keyed).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        events = Events(connection)
        await connection.session.update(session=transcription_session())
        await send_audio(connection, pcm24k(cleared.path)[: 2 * 24_000 * 4])  # four seconds into a sentence
        await connection.input_audio_buffer.clear()
        await send_audio(connection, bytes(2 * 24_000) + pcm24k(kept.path) + bytes(2 * 24_000))

        def completed() -> list[Any]:
            return [e.transcript for e in events.of("conversation.item.input_audio_transcription.completed") if e.transcript]

        await until(lambda: word_error_rate(kept.reference, " ".join(completed())) <= 0.15, "the kept sentence's words", limit_s=120)
        events.stop()
    assert events.of("input_audio_buffer.cleared")
    cleared_items = {e.item_id for e in events.of("input_audio_buffer.speech_started")} - {
        e.item_id for e in events.of("input_audio_buffer.committed")
    }
    assert len(cleared_items) == 1, events.all  # announced, never committed or completed
    assert not {e.item_id for e in events.of("conversation.item.input_audio_transcription.completed")} & cleared_items


async def test_the_beta_transcription_session_update_is_served(keyed, clips) -> None:
    clip = clips["en_harvard_birch_canoe.wav"]
    async with client(keyed).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        events = Events(connection)
        await connection.send(
            {
                "type": "transcription_session.update",
                "session": {"input_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1"}},
            }
        )
        await send_audio(connection, pcm24k(clip.path) + bytes(2 * 24_000))  # and a second of silence

        def text() -> str:
            return " ".join(e.transcript for e in events.of("conversation.item.input_audio_transcription.completed"))

        await until(lambda: word_error_rate(clip.reference, text()) <= 0.15, "the sentence's words", limit_s=120)
        events.stop()
    assert events.all[1].type == "transcription_session.updated"


async def test_configuration_errors_are_error_events_and_the_session_goes_on(keyed, clips) -> None:
    async with client(keyed).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        events = Events(connection)
        await connection.session.update(session=transcription_session(format={"type": "audio/pcm", "rate": 16_000}))
        await connection.session.update(session=transcription_session(transcription={"model": "gpt-3.5-turbo"}))
        await connection.send({"type": "response.create"})  # a conversation event: not served here
        await until(lambda: len(events.of("error")) == 3, "three errors")
        assert [(e.error.code, e.error.param) for e in events.of("error")] == [
            ("invalid_value", "format.rate"),
            ("model_not_found", "model"),
            ("invalid_event", "type"),
        ]
        assert "24000 Hz" in events.of("error")[0].error.message
        # Still open: a good configuration is taken; the same one again is answered; another is refused.
        good = transcription_session()
        await connection.session.update(session=good)
        await connection.session.update(session=good)
        await connection.session.update(session=transcription_session(transcription={"model": "whisper-1", "language": "de"}))
        await until(lambda: len(events.of("session.updated")) == 2 and len(events.of("error")) == 4, "two updates, one refusal")
        assert events.of("error")[-1].error.code == "session_already_configured"
        events.stop()


async def test_a_value_the_session_rejects_closes_with_1007(keyed) -> None:
    async with client(keyed).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        events = Events(connection)
        await connection.session.update(session=transcription_session(turn_detection={"type": "server_vad", "threshold": 1.5}))
        await until(lambda: events.closed, "the session to close")
    [error] = events.of("error")
    assert error.error.code == "invalid_metadata" and error.error.param == "streaming_vad_config.threshold"
    assert connection._connection.close_code == 1007  # noqa: SLF001 - the SDK keeps the socket there


async def test_a_wrong_key_or_intent_is_refused(keyed) -> None:
    url = f"ws://127.0.0.1:{keyed.port}/v1/realtime?intent=transcription"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer wrong"}):
            pass
    assert refused.value.response.status_code == 401
    async with websockets.connect(url.replace("intent=transcription", "model=gpt-realtime"), additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        message = await ws.recv()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert re.search(r'"code": "invalid_intent"', message), message
    assert closed.value.rcvd.code == 1008


async def test_the_snippet_in_the_docs_works(keyed, clips) -> None:
    namespace = run_snippet("The OpenAI SDK (live transcription)", {"http://127.0.0.1:8000": keyed.http, '"my-key"': repr(KEY)})
    audio = np.concatenate([read_wav(clips["en_harvard_birch_canoe.wav"].path), np.zeros(16_000, dtype=np.float32)])
    text = await asyncio.wait_for(namespace["transcribe"](s16le(resample(audio, 24_000))), 120)
    assert word_error_rate(clips["en_harvard_birch_canoe.wav"].reference, text) <= 0.15, text
