"""Hostile and broken input, end to end: each case gets its clear error and its documented close
code (docs/protocol.md), and in the same test a well-behaved client on the same server still
gets its transcript. Real server on loopback, real tiny.en, real Silero VAD, real speech."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import RunningServer, read_wav, start_server
from tests.streaming import Received, converse, s16le, stream, word_error_rate

KEY = "hostile-test-key"
ALLOWED_ORIGIN = "https://app.example.com"
AUTH = {"Authorization": f"Api-Key {KEY}"}
SILENCE = np.zeros(16_000, dtype=np.float32)


@pytest.fixture(scope="module")
def strict(engine, vad) -> Iterator[RunningServer]:
    """Short timeouts, 64 KiB frames, an API key and an origin list."""
    from whisperwire.protocol import SessionLimits

    limits = SessionLimits(metadata_timeout_s=0.5, idle_timeout_s=0.5, max_frame_bytes=64 * 1024)
    with start_server(engine, vad, limits=limits, api_keys=(KEY,), allowed_origins=(ALLOWED_ORIGIN,)) as running:
        yield running


@pytest.fixture(scope="module")
def speech(clips) -> tuple[bytes, str]:
    clip = clips["en_timit_LDC93S1.wav"]
    return s16le(np.concatenate([read_wav(clip.path), SILENCE])), clip.reference


async def healthy(url: str, speech: tuple[bytes, str], headers: dict[str, str] | None = None) -> None:
    """A well-behaved client: its transcript comes back whole and its session ends with 1000."""
    audio, reference = speech
    received = await stream(url, {}, audio, headers=headers)
    assert received.errors == [] and received.close_code == 1000, received.messages
    assert word_error_rate(reference, received.text) <= 0.2, received.text


async def alongside(url: str, speech: tuple[bytes, str], hostile: Any, headers: dict[str, str] | None = None) -> Any:
    """Run the hostile exchange and a healthy client at once; return what the hostile one got."""
    result, _ = await asyncio.gather(hostile, healthy(url, speech, headers))
    return result


def assert_closed_with(received: Received, code: str, close: int, field: str | None = None) -> None:
    [error] = received.errors
    assert error["error"]["code"] == code, error
    assert error["error"]["field"] == field, error
    assert len(error["error"]["message"]) > 10, error
    assert received.close_code == close


# --------------------------------------------------------------------------- metadata

SP = "streaming_params"
VAD = "streaming_vad_config"
WP = "whisper_params"
SAMPLING = "whisper_params.whisper_sampling_params"


def meta(section: str, key: str, value: Any) -> str:
    if section == SAMPLING:
        return json.dumps({WP: {"whisper_sampling_params": {key: value}}})
    return json.dumps({section: {key: value}})


BAD_METADATA = [
    # not JSON
    ("not json", "{not json", None),
    ("empty text frame", "", None),
    ("truncated json", '{"streaming_params": {', None),
    # not an object
    ("a string", '"a string"', None),
    ("an array", "[]", None),
    ("a number", "42", None),
    ("null", "null", None),
    # too large, too deep
    ("over 64 KiB", json.dumps({WP: {"prompt": "a" * 70_000}}), None),
    ("nested past the stack", "[" * 30_000 + "]" * 30_000, None),
    # wrong types
    ("sample_rate as string", meta(SP, "sample_rate", "16000"), "streaming_params.sample_rate"),
    ("sample_rate as float", meta(SP, "sample_rate", 16000.5), "streaming_params.sample_rate"),
    ("bool as int", meta(SP, "enable_partial_transcripts", 1), "streaming_params.enable_partial_transcripts"),
    ("threshold as string", meta(VAD, "threshold", "0.5"), "streaming_vad_config.threshold"),
    ("section as array", json.dumps({SP: []}), "streaming_params"),
    ("language_options as string", meta(WP, "language_options", "en"), "whisper_params.language_options"),
    ("prompt as number", meta(WP, "prompt", 123), "whisper_params.prompt"),
    # out of range, wrong sample rate
    ("sample_rate 96000", meta(SP, "sample_rate", 96_000), "streaming_params.sample_rate"),
    ("sample_rate 7999", meta(SP, "sample_rate", 7_999), "streaming_params.sample_rate"),
    ("sample_rate 0", meta(SP, "sample_rate", 0), "streaming_params.sample_rate"),
    ("threshold 1.5", meta(VAD, "threshold", 1.5), "streaming_vad_config.threshold"),
    ("threshold NaN", '{"streaming_vad_config": {"threshold": NaN}}', "streaming_vad_config.threshold"),
    ("length_penalty Infinity", '{"whisper_params": {"whisper_sampling_params": {"length_penalty": Infinity}}}', f"{SAMPLING}.length_penalty"),
    ("min_silence 10001", meta(VAD, "min_silence_duration_ms", 10_001), "streaming_vad_config.min_silence_duration_ms"),
    ("speech_pad -1", meta(VAD, "speech_pad_ms", -1), "streaming_vad_config.speech_pad_ms"),
    ("partial interval 0.05", meta(SP, "partial_transcript_interval_s", 0.05), "streaming_params.partial_transcript_interval_s"),
    ("max duration 31", meta(SP, "final_transcript_max_duration_s", 31), "streaming_params.final_transcript_max_duration_s"),
    ("beam_width 9", meta(SAMPLING, "beam_width", 9), f"{SAMPLING}.beam_width"),
    ("repetition_penalty 0", meta(SAMPLING, "repetition_penalty", 0), f"{SAMPLING}.repetition_penalty"),
    ("no_repeat_ngram -1", meta(SAMPLING, "no_repeat_ngram_size", -1), f"{SAMPLING}.no_repeat_ngram_size"),
    # unknown keys
    ("unknown top-level key", json.dumps({"bogus": True}), "bogus"),
    ("typo in a section", meta(SP, "sample_rte", 16_000), "streaming_params.sample_rte"),
    ("unknown sampling key", meta(SAMPLING, "temperature", 0.2), f"{SAMPLING}.temperature"),
    ("unknown legacy key", json.dumps({"streaming_whisper_params": {"foo": 1}}), "streaming_whisper_params.foo"),
    ("legacy and current at once", json.dumps({"vad_params": {}, VAD: {}}), "vad_params"),
    # unknown encoding or language
    ("encoding mp3", meta(SP, "encoding", "mp3"), "streaming_params.encoding"),
    ("language klingon", meta(WP, "audio_language", "klingon"), "whisper_params.audio_language"),
    ("language the model lacks", meta(WP, "audio_language", "de"), "whisper_params.audio_language"),
    ("unknown language option", json.dumps({WP: {"audio_language": "auto", "language_options": ["xx"]}}), "whisper_params.language_options"),
    # prompts
    ("prompt over 224 tokens", meta(WP, "prompt", "hello " * 400), "whisper_params.prompt"),
    ("prompt with a lone surrogate", '{"whisper_params": {"prompt": "\\ud800"}}', "whisper_params.prompt"),
]


@pytest.mark.parametrize(("metadata", "field"), [c[1:] for c in BAD_METADATA], ids=[c[0] for c in BAD_METADATA])
async def test_bad_metadata_gets_invalid_metadata_and_1007(server, speech, metadata, field) -> None:
    received = await alongside(server.url, speech, converse(server.url, [metadata, s16le(SILENCE)]))
    assert_closed_with(received, "invalid_metadata", 1007, field)


# --------------------------------------------------------------------------- frames in the session


def f32(values: list[float]) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


F32 = json.dumps({SP: {"encoding": "pcm_f32le"}})
BAD_SESSIONS = [
    ("binary before metadata", [s16le(SILENCE), "{}"], "binary_before_metadata", 1003),
    ("empty binary before metadata", [b"", "{}"], "binary_before_metadata", 1003),
    ("NaN in pcm_f32le", [F32, f32([0.0, float("nan"), 0.0])], "invalid_audio", 1007),
    ("+Inf in pcm_f32le", [F32, f32([0.1] * 1000 + [float("inf")])], "invalid_audio", 1007),
    ("-Inf split across frames", [F32, f32([0.0])[:2], f32([float("-inf")])[2:] + f32([0.0])[:2]], "invalid_audio", 1007),
]


@pytest.mark.parametrize(("frames", "code", "close"), [c[1:] for c in BAD_SESSIONS], ids=[c[0] for c in BAD_SESSIONS])
async def test_bad_frames_get_their_error_and_close(server, speech, frames, code, close) -> None:
    received = await alongside(server.url, speech, converse(server.url, frames))
    assert_closed_with(received, code, close)


TERMINATE = '{"terminate_session": true}'
STAYS_OPEN = [
    ("metadata twice", "{}"),
    ("unknown control type", '{"type": "pause"}'),
    ("finalize with an extra key", '{"type": "finalize", "now": true}'),
    ("upper-case FINALIZE", "FINALIZE"),
    ("terminate false", '{"terminate_session": false}'),
    ("control nested past the stack", "[" * 100_000),
]


@pytest.mark.parametrize("control", [c[1] for c in STAYS_OPEN], ids=[c[0] for c in STAYS_OPEN])
async def test_unknown_control_is_an_error_and_the_session_goes_on(server, speech, control) -> None:
    audio, reference = speech
    half = len(audio) // 2 & ~1
    exchange = converse(server.url, ["{}", audio[:half], control, audio[half:], TERMINATE])
    received = await alongside(server.url, speech, exchange)
    [error] = received.errors
    assert error["error"]["code"] == "unknown_control" and "terminate" in error["error"]["message"]
    # The speech around the bad frame is all still there.
    assert word_error_rate(reference, received.text) <= 0.2, received.text
    assert received.close_code == 1000


def frames_of(audio: bytes, sizes: list[int]) -> list[bytes]:
    frames, at, i = [], 0, 0
    while at < len(audio):
        size = sizes[i % len(sizes)]
        frames.append(audio[at : at + size])
        at, i = at + size, i + 1
    return frames


ODD_BUT_VALID = [
    ("empty frames between audio", lambda a: [f for chunk in frames_of(a, [640]) for f in (chunk, b"")]),
    ("odd-length frames", lambda a: frames_of(a, [3, 641, 1, 1279])),
    ("10 000 tiny frames in a burst", lambda a: frames_of(a, [max(1, len(a) // 10_000)])),
]


@pytest.mark.parametrize("split", [c[1] for c in ODD_BUT_VALID], ids=[c[0] for c in ODD_BUT_VALID])
async def test_odd_but_valid_framing_is_transcribed_whole(server, speech, split) -> None:
    audio, reference = speech
    frames = split(audio)
    assert b"".join(frames) == audio
    received = await alongside(server.url, speech, converse(server.url, ["{}", *frames, TERMINATE]))
    assert received.errors == [] and received.close_code == 1000
    assert word_error_rate(reference, received.text) <= 0.2, received.text


# --------------------------------------------------------------------------- limits of the strict server


async def slow_fragments() -> AsyncIterator[str]:
    """Slowloris over WebSocket: the metadata dribbles in as fragments, slower than the timeout."""
    for piece in ('{"streaming', '_params"', ": {}}"):
        yield piece
        await asyncio.sleep(0.4)


TIMEOUTS = [
    ("no metadata (slowloris)", lambda: [], "metadata_timeout"),
    ("metadata in slow fragments", lambda: [slow_fragments()], "metadata_timeout"),
    ("idle after the metadata", lambda: ["{}"], "idle_timeout"),
    ("idle mid-utterance", lambda: ["{}", s16le(SILENCE[:8000])], "idle_timeout"),
]


@pytest.mark.parametrize(("frames", "code"), [c[1:] for c in TIMEOUTS], ids=[c[0] for c in TIMEOUTS])
async def test_silence_past_a_limit_closes_1008(strict, speech, frames, code) -> None:
    # The client sends these frames, then nothing more, and waits for the server's close.
    received = await alongside(strict.url, speech, converse(strict.url, frames(), headers=AUTH), AUTH)
    assert_closed_with(received, code, 1008)
    assert "0.5 s" in received.errors[0]["error"]["message"]


HUGE = [
    ("binary frame over the limit", ["{}", b"\x00" * (64 * 1024 + 2)]),
    ("text frame over the limit", ["{}", "x" * (64 * 1024 + 1)]),
    ("huge metadata frame", ["{" + " " * (64 * 1024) + "}"]),
]


@pytest.mark.parametrize("frames", [c[1] for c in HUGE], ids=[c[0] for c in HUGE])
async def test_frames_over_the_limit_close_1009(strict, speech, frames) -> None:
    received = await alongside(strict.url, speech, converse(strict.url, frames, headers=AUTH), AUTH)
    # The WebSocket layer refuses the frame before the session sees it: no message, a reason.
    assert received.messages == []
    assert received.close_code == 1009
    assert "exceeds limit of 65536 bytes" in received.close_reason


async def test_a_frame_at_the_limit_is_accepted(strict, speech) -> None:
    frames = ["{}", b"\x00" * (64 * 1024), TERMINATE]
    received = await alongside(strict.url, speech, converse(strict.url, frames, headers=AUTH), AUTH)
    assert received.messages == [] and received.close_code == 1000


# --------------------------------------------------------------------------- handshakes


async def refused_status(url: str, headers: dict[str, str]) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await converse(url, ["{}"], headers=headers)
    return refused.value.response.status_code


BAD_AUTH = [
    ("no key", "", {}),
    ("wrong key", "", {"Authorization": "Api-Key wrong"}),
    ("wrong bearer", "", {"Authorization": "Bearer wrong"}),
    ("empty header", "", {"Authorization": ""}),
    ("scheme without key", "", {"Authorization": "Api-Key"}),
    ("unknown scheme", "", {"Authorization": f"Basic {KEY}"}),
    ("key with trailing junk", "", {"Authorization": f"Api-Key {KEY} extra"}),
    ("key as the scheme", "", {"Authorization": KEY}),
    ("wrong query key", "?api_key=wrong", {}),
    ("empty query key", "?api_key=", {}),
    ("right query key, wrong header", f"?api_key={KEY}", {"Authorization": "Api-Key wrong"}),
]


@pytest.mark.parametrize(("query", "headers"), [c[1:] for c in BAD_AUTH], ids=[c[0] for c in BAD_AUTH])
async def test_bad_authorization_is_refused_401(strict, speech, query, headers) -> None:
    status = await alongside(strict.url, speech, refused_status(strict.url + query, headers), AUTH)
    assert status == 401


async def test_an_origin_not_allowed_is_refused_403(strict, speech) -> None:
    status = await alongside(
        strict.url, speech, refused_status(strict.url, {**AUTH, "Origin": "https://evil.example"}), AUTH
    )
    assert status == 403
    # The allowed origin, and clients that send no Origin (not browsers), are served.
    await healthy(strict.url, speech, {**AUTH, "Origin": ALLOWED_ORIGIN})


async def test_a_query_key_on_a_server_without_keys_is_ignored(server, speech) -> None:
    await alongside(server.url, speech, healthy(server.url + "?api_key=anything", speech))


async def test_a_wrong_websocket_path_is_refused_404_naming_the_endpoints(strict, speech) -> None:
    wrong = strict.url.replace("/v1/websocket", "/v1/websockets")
    with pytest.raises(InvalidStatus) as refused:
        await converse(wrong, ["{}"], headers=AUTH)
    response = refused.value.response
    assert response.status_code == 404
    body = response.body.decode()
    assert "/v1/websocket" in body and "/environments/production/websocket" in body and "/v1/realtime" in body, body
    await healthy(strict.url, speech, AUTH)  # the real endpoint still serves
