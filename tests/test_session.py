"""The sans-I/O session, driven deterministically: no socket, no model, no threads.

The VAD here is a stand-in that calls a window speech when its level is high, so every
boundary is known to the sample; tests/test_vad.py and the end-to-end tests use the real one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from whisperwire.engine import ModelInfo, Result, SegmentResult, Word
from whisperwire.protocol import CloseCode, ErrorCode, ErrorMessage, SessionLimits, Transcription
from whisperwire.endpointer import COVERAGE_LOOKBACK_S
from whisperwire.context import LEFT_CONTEXT_S
from whisperwire.session import (
    CancelInference,
    CloseConnection,
    InferenceRequest,
    RunInference,
    SendMessage,
    Session,
    State,
)

RATE = 16_000
WINDOW = 512
ENGLISH = ModelInfo(name="tiny.en", multilingual=False, languages=frozenset({"en"}))
MULTI = ModelInfo(name="base", multilingual=True, languages=frozenset({"en", "de", "fr"}))


class LevelVAD:
    """Speech probability from the window's peak level: 0.95 loud, 0.02 quiet, 0.4 in between."""

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        peaks = np.abs(audio.reshape(-1, WINDOW)).max(axis=1)
        return np.where(peaks > 0.2, 0.95, np.where(peaks > 0.05, 0.4, 0.02)).astype(np.float32)


def make_session(
    model: ModelInfo = ENGLISH, limits: SessionLimits = SessionLimits(), drafts: bool = False, **metadata: object
) -> Session:
    session = Session(
        "sess-1",
        model=model,
        count_tokens=lambda text: len(text.split()),
        new_vad=LevelVAD,
        limits=limits,
        now=0.0,
        draft_finals=drafts,
    )
    if metadata is not None:
        assert session.receive_text(json.dumps(metadata), now=0.0) == []
    return session


def speech(seconds: float, level: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def pcm(audio: np.ndarray) -> bytes:
    return (audio * 32767).astype("<i2").tobytes()


def feed(session: Session, audio: np.ndarray, frame_ms: int = 20) -> list:
    data, step, events = pcm(audio), RATE * frame_ms // 1000 * 2, []
    for i in range(0, len(data), step):
        events += session.receive_bytes(data[i : i + step], now=0.0)
    return events


def requests(events: list, kind: str | None = None) -> list[InferenceRequest]:
    found = [e.request for e in events if isinstance(e, RunInference)]
    return [r for r in found if kind is None or r.kind == kind]


def own_audio(request: InferenceRequest) -> np.ndarray:
    """A request's audio without its left context (context.py): the utterance's own."""
    return request.audio[round(request.context_s * RATE) :]


def start_s(request: InferenceRequest) -> float:
    """Where a request's own audio starts, from the stream's start."""
    return request.offset_s + request.context_s


def messages(events: list) -> list:
    return [e.message for e in events if isinstance(e, SendMessage)]


def closes(events: list) -> list[CloseConnection]:
    return [e for e in events if isinstance(e, CloseConnection)]


def result(text: str, start: float = 0.0, end: float = 1.0, words: bool = False, logprob: float = -0.2) -> Result:
    if not text:
        return Result(segments=(), language="en", language_prob=None)
    word_list = tuple(Word(w, start + i * 0.1, start + i * 0.1 + 0.1, 0.9) for i, w in enumerate(text.split()))
    segment = SegmentResult(
        text=" " + text,
        start=start,
        end=end,
        avg_logprob=logprob,
        n_tokens=len(text.split()),
        no_speech_prob=0.01,
        compression_ratio=1.2,
        words=word_list if words else None,
    )
    return Result(segments=(segment,), language="en", language_prob=None)


# --------------------------------------------------------------------------- start and errors


def test_binary_before_metadata_is_refused_with_1003() -> None:
    session = Session("s", model=ENGLISH, count_tokens=len, new_vad=LevelVAD)
    events = session.receive_bytes(b"\x00\x00", now=0.0)
    [error] = messages(events)
    assert isinstance(error, ErrorMessage) and error.error.code is ErrorCode.BINARY_BEFORE_METADATA
    assert closes(events)[0].code == CloseCode.UNSUPPORTED_DATA
    assert session.state is State.CLOSED


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ("not json", None),
        ("[1, 2]", None),
        ('{"streaming_params": {"sample_rate": 4000}}', "streaming_params.sample_rate"),
        ('{"streaming_params": {"encodng": "pcm_s16le"}}', "streaming_params.encodng"),
        ('{"whisper_params": {"audio_language": "de"}}', "whisper_params.audio_language"),
        ('{"whisper_params": {"prompt": "' + "word " * 300 + '"}}', "whisper_params.prompt"),
    ],
)
def test_bad_metadata_gets_invalid_metadata_and_1007(metadata: str, field: str | None) -> None:
    session = Session("s", model=ENGLISH, count_tokens=lambda t: len(t.split()), new_vad=LevelVAD)
    events = session.receive_text(metadata, now=0.0)
    [error] = messages(events)
    assert error.error.code is ErrorCode.INVALID_METADATA
    assert error.error.field == field
    assert closes(events)[0].code == CloseCode.INVALID_PAYLOAD


def test_multilingual_model_accepts_german() -> None:
    session = make_session(MULTI, whisper_params={"audio_language": "de"})
    assert session.state is State.STREAMING


def test_unknown_control_keeps_the_session_open() -> None:
    session = make_session()
    events = session.receive_text('{"type": "flush"}', now=1.0)
    [error] = messages(events)
    assert error.error.code is ErrorCode.UNKNOWN_CONTROL
    assert closes(events) == [] and session.state is State.STREAMING


def test_metadata_timeout_and_idle_timeout_close_with_1008() -> None:
    limits = SessionLimits(metadata_timeout_s=10, idle_timeout_s=60)
    waiting = Session("s", model=ENGLISH, count_tokens=len, new_vad=LevelVAD, limits=limits, now=5.0)
    assert waiting.deadline() == 15.0
    assert waiting.timeout(14.9) == []
    events = waiting.timeout(15.0)
    assert messages(events)[0].error.code is ErrorCode.METADATA_TIMEOUT
    assert closes(events)[0].code == CloseCode.POLICY_VIOLATION

    idle = make_session(limits=limits)
    idle.receive_bytes(pcm(silence(0.1)), now=30.0)
    assert idle.deadline() == 90.0
    events = idle.timeout(90.0)
    assert messages(events)[0].error.code is ErrorCode.IDLE_TIMEOUT
    assert closes(events)[0].code == CloseCode.POLICY_VIOLATION


def test_a_frame_over_the_limit_closes_with_1009() -> None:
    limits = SessionLimits(max_frame_bytes=1000)
    audio = make_session(limits=limits)
    assert audio.receive_bytes(b"\x00" * 1000, now=0.0) == []
    events = audio.receive_bytes(b"\x00" * 1002, now=0.0)
    [error] = messages(events)
    assert error.error.code is ErrorCode.FRAME_TOO_LARGE and "1002 bytes" in error.error.message
    assert closes(events)[0].code == CloseCode.MESSAGE_TOO_BIG

    text = Session("s", model=ENGLISH, count_tokens=len, new_vad=LevelVAD, limits=limits, now=0.0)
    # 640 characters, but 1240 bytes: the limit is in bytes, as on the wire.
    events = text.receive_text(json.dumps({"whisper_params": {"prompt": "é" * 600}}, ensure_ascii=False), now=0.0)
    assert messages(events)[0].error.code is ErrorCode.FRAME_TOO_LARGE
    assert closes(events)[0].code == CloseCode.MESSAGE_TOO_BIG


def test_audio_that_stops_mid_utterance_is_silence_after_the_silence_window() -> None:
    # A framework client that stops sending at the end of a turn (no trailing silence, no
    # finalize) gets its final once the audio has not come for the silence window.
    session = make_session(streaming_vad_config={"min_silence_duration_ms": 300})
    assert requests(feed_in_real_time(session, speech(1.0), start=10.0)) == []
    last = 10.0 + 0.98  # the last 20 ms frame arrived then; its audio ends 20 ms later
    assert session.deadline() == pytest.approx(last + 0.02 + 0.3)
    assert session.timeout(last + 0.3) == []
    [final] = requests(session.timeout(last + 0.33))
    assert final.kind == "final" and final.transcription_num == 0
    assert final.offset_s + len(final.audio) / RATE == pytest.approx(1.0)  # all the audio sent
    # Nothing is open now: the next deadline is the idle timeout, and the stream goes on.
    assert session.deadline() == pytest.approx(last + 60.0)
    [second] = requests(feed_in_real_time(session, np.concatenate([speech(1.0), silence(0.5)]), start=12.0))
    assert second.transcription_num == 1


def test_a_client_sending_one_second_chunks_is_not_stalled_between_them() -> None:
    session = make_session(streaming_vad_config={"min_silence_duration_ms": 300})
    audio = speech(3.0)
    for n in range(3):
        session.receive_bytes(pcm(audio[n * RATE : (n + 1) * RATE]), now=float(n))
        assert session.deadline() == pytest.approx(n + 1.0 + 0.3)  # its audio plays until n + 1
        assert requests(session.timeout(n + 1.0)) == []  # the next chunk is due, not late
    [final] = requests(session.timeout(3.3))
    assert final.offset_s + len(final.audio) / RATE == pytest.approx(3.0)


def test_nan_in_float_audio_is_invalid_audio() -> None:
    session = make_session(streaming_params={"encoding": "pcm_f32le"})
    events = session.receive_bytes(np.array([0.1, np.nan], dtype="<f4").tobytes(), now=0.0)
    assert messages(events)[0].error.code is ErrorCode.INVALID_AUDIO
    assert closes(events)[0].code == CloseCode.INVALID_PAYLOAD


# --------------------------------------------------------------------------- utterances


def test_speech_then_silence_asks_for_one_final_from_the_look_back_to_the_padded_end() -> None:
    session = make_session(streaming_vad_config={"min_silence_duration_ms": 300, "speech_pad_ms": 30})
    lead = COVERAGE_LOOKBACK_S + 2.016  # a whole number of VAD windows
    events = feed(session, np.concatenate([silence(lead), speech(2.048), silence(1.0)]))
    [final] = requests(events)
    assert final.kind == "final" and final.transcription_num == 0
    # Whisper hears COVERAGE_LOOKBACK_S before the speech the VAD found, and the pad after it.
    pad = 30 * RATE // 1000
    assert start_s(final) == pytest.approx(lead - COVERAGE_LOOKBACK_S)
    assert len(own_audio(final)) == (COVERAGE_LOOKBACK_S + 2.048) * RATE + pad
    # Before it, what the stream holds of the audio before the utterance, as left context.
    assert final.offset_s == pytest.approx(max(0.0, lead - COVERAGE_LOOKBACK_S - LEFT_CONTEXT_S))
    # The final is asked for once the silence window has passed, not before.
    early = make_session()
    assert requests(feed(early, np.concatenate([speech(1.0), silence(0.25)]))) == []


def test_utterances_separated_by_silence_are_numbered_and_do_not_overlap() -> None:
    session = make_session(streaming_vad_config={"speech_pad_ms": 300, "min_silence_duration_ms": 200})
    audio = np.concatenate([speech(1.0), silence(0.5), speech(1.0), silence(0.5), speech(1.0), silence(1.0)])
    finals = requests(feed(session, audio))
    assert [r.transcription_num for r in finals] == [0, 1, 2]
    spans = [(start_s(r), r.offset_s + len(r.audio) / RATE) for r in finals]
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end
    for span, expected_start in zip(spans, (0.0, 1.5, 3.0)):
        assert span[0] <= expected_start + 0.04 and span[1] >= expected_start + 1.0


def test_between_thresholds_neither_starts_nor_ends_speech() -> None:
    session = make_session(streaming_vad_config={"min_silence_duration_ms": 300})
    quiet_but_not_silent = speech(1.0, level=0.1)  # probability 0.4: under 0.5, over 0.35
    assert requests(feed(session, quiet_but_not_silent)) == []
    events = feed(session, np.concatenate([speech(0.5), quiet_but_not_silent]))
    assert requests(events) == []  # 0.4 is above threshold - 0.15: the utterance goes on
    assert len(requests(feed(session, silence(0.5)))) == 1


def test_final_results_are_sent_in_order_and_empty_ones_skipped() -> None:
    session = make_session(streaming_vad_config={"min_silence_duration_ms": 100})
    finals = requests(feed(session, np.concatenate([speech(0.5), silence(0.3), speech(0.5), silence(0.3), speech(0.5), silence(0.3)])))
    first, second, third = finals
    assert messages(session.inference_done(third, result("three"))) == []
    assert messages(session.inference_done(second, result(""))) == []
    sent = messages(session.inference_done(first, result("one")))
    assert [(m.transcription_num, m.transcript, m.is_final) for m in sent] == [(0, "one", True), (2, "three", True)]


def test_message_times_are_seconds_from_stream_start() -> None:
    session = make_session(whisper_params={"show_word_timestamps": True})
    [final] = requests(feed(session, np.concatenate([silence(2.0), speech(1.0), silence(0.5)])))
    tone = 2.0 - final.offset_s  # the audio starts before the tone: the look-back
    [message] = messages(session.inference_done(final, result("hello there", start=tone + 0.1, end=tone + 0.9, words=True)))
    segment = message.segments[0]
    assert segment.start_time == pytest.approx(2.1, abs=1e-3)
    # Whisper ended the last word 0.9 s into the tone; the VAD heard speech until 3.0 s of
    # the stream (the first window wholly after the tone starts at 3.008 s).
    speech_end = final.offset_s + (final.speech_end_s or 0.0)
    assert speech_end == pytest.approx(3.0, abs=0.04)
    assert segment.end_time == pytest.approx(speech_end, abs=1e-3)
    assert segment.word_timestamps[-1].end_time == pytest.approx(speech_end, abs=1e-3)
    assert [w.word for w in segment.word_timestamps] == ["hello", "there"]
    assert message.confidence == pytest.approx(np.exp(-0.2))
    payload = json.loads(message.model_dump_json())
    assert set(payload) == {"type", "transcription_num", "is_final", "transcript", "confidence", "language_code", "language_prob", "segments"}
    assert "word_timestamps" in payload["segments"][0]


def test_an_end_far_from_where_the_vad_heard_speech_stop_is_left_alone() -> None:
    session = make_session()
    [final] = requests(feed(session, np.concatenate([speech(2.0), silence(0.5)])))
    [message] = messages(session.inference_done(final, result("hi", start=0.1, end=1.0)))
    assert message.segments[0].end_time == pytest.approx(final.offset_s + 1.0, abs=1e-3)


def test_a_request_says_where_the_vad_heard_speech() -> None:
    # 1 s of silence, 1 s of tone, 0.5 s of silence: the speech windows are the 32 from the
    # one holding the tone's start (0.992 s) to the one holding its end (1.984 s), given as
    # seconds from the start of the final's audio.
    session = make_session()
    [final] = requests(feed(session, np.concatenate([silence(1.0), speech(1.0), silence(0.5)])))
    assert final.offset_s + final.speech_at[0] == pytest.approx(0.992)
    assert final.offset_s + final.speech_at[-1] == pytest.approx(1.984)
    assert all(b - a == pytest.approx(WINDOW / RATE) for a, b in zip(final.speech_at, final.speech_at[1:]))


def test_word_timestamps_key_is_absent_unless_asked() -> None:
    session = make_session()
    [final] = requests(feed(session, np.concatenate([speech(1.0), silence(0.5)])))
    [message] = messages(session.inference_done(final, result("hi")))
    assert "word_timestamps" not in json.loads(message.model_dump_json())["segments"][0]


def test_doubtful_text_of_a_burst_shorter_than_a_quarter_second_is_dropped() -> None:
    # 0.192 s of speech (6 windows): a laugh or a click as often as a word.
    session = make_session()
    [burst] = requests(feed(session, np.concatenate([speech(0.192), silence(0.5)])))
    assert burst.speech_s == pytest.approx(0.192)
    assert messages(session.inference_done(burst, result("Thank you.", logprob=-1.0))) == []
    # Decoded with confidence, the same burst is a word.
    [word] = requests(feed(session, np.concatenate([speech(0.192), silence(0.5)])))
    [sent] = messages(session.inference_done(word, result("Yes.", logprob=-0.5)))
    assert (sent.transcription_num, sent.transcript) == (1, "Yes.")
    # With a quarter second of speech or more, Whisper's doubt alone drops nothing here.
    [longer] = requests(feed(session, np.concatenate([speech(0.256), silence(0.5)])))
    assert [m.transcript for m in messages(session.inference_done(longer, result("Not.", logprob=-1.1)))] == ["Not."]


@pytest.mark.parametrize(("words", "accepted"), [(224, True), (225, False)])
def test_a_prompt_of_224_tokens_is_accepted_and_one_more_is_not(words: int, accepted: bool) -> None:
    session = Session("s", model=ENGLISH, count_tokens=lambda text: len(text.split()), new_vad=LevelVAD)
    events = session.receive_text(json.dumps({"whisper_params": {"prompt": "word " * words}}), now=0.0)
    if accepted:
        assert events == [] and session.state is State.STREAMING
    else:
        [error] = messages(events)
        assert error.error.field == "whisper_params.prompt" and "225 tokens; at most 224" in error.error.message
        assert closes(events)[0].code == CloseCode.INVALID_PAYLOAD


def test_context_prompt_carries_the_previous_final_after_the_users_prompt() -> None:
    audio = np.concatenate([speech(0.5), silence(0.5), speech(0.5), silence(0.5)])
    plain = make_session(whisper_params={"prompt": "Names: Prynne."})
    first, second = requests(feed(plain, audio))
    plain.inference_done(first, result("one"))
    assert second.options.context is None and second.options.prompt == "Names: Prynne."

    session = Session(
        "sess-2", model=ENGLISH, count_tokens=lambda t: len(t.split()), new_vad=LevelVAD, context_prompt=True
    )
    session.receive_text(json.dumps({"whisper_params": {"prompt": "Names: Prynne."}}), now=0.0)
    [first] = requests(feed(session, audio[: int(1.0 * RATE)]))
    assert first.options.context is None  # nothing heard before it
    session.inference_done(first, result("And so my fellow Americans"))
    [second] = requests(feed(session, audio[int(1.0 * RATE) :]))
    assert (second.options.prompt, second.options.context) == ("Names: Prynne.", "And so my fellow Americans")
    # A final without words is not context.
    session.inference_done(second, result(""))
    [third] = requests(feed(session, np.concatenate([speech(0.5), silence(0.5)])))
    assert third.options.context == "And so my fellow Americans"
    # An utterance that ends while the one before is still being recognised waits for its text.
    assert requests(feed(session, np.concatenate([speech(0.5), silence(0.5)]))) == []
    events = session.inference_done(third, result("ask not"))
    assert [m.transcript for m in messages(events)] == ["ask not"]
    [fourth] = requests(events)
    assert (fourth.transcription_num, fourth.options.context) == (3, "ask not")
    # Its audio, from where the third's ended, was kept while it waited.
    assert start_s(fourth) == pytest.approx(third.offset_s + len(third.audio) / RATE)
    assert len(own_audio(fourth)) >= 0.5 * RATE


# --------------------------------------------------------------------------- partials


def test_partials_come_every_interval_of_speech_and_never_after_the_final() -> None:
    session = make_session(streaming_params={"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.5})
    events = feed(session, speech(2.1))
    partials = requests(events, "partial")
    assert [round(len(p.audio) / RATE, 1) for p in partials] == [0.5, 1.0, 1.5, 2.0]
    sent = messages(session.inference_done(partials[-1], result("so far")))
    assert [(m.is_final, m.transcript) for m in sent] == [(False, "so far")]
    [final] = requests(feed(session, silence(0.5)))
    late = session.inference_done(partials[-2], result("stale"))
    assert messages(late) == []
    [done] = messages(session.inference_done(final, result("")))
    # A number seen in a partial always gets its final, even an empty one.
    assert (done.transcription_num, done.is_final, done.transcript) == (0, True, "")


def test_a_partial_with_the_words_already_shown_is_not_sent() -> None:
    session = make_session(streaming_params={"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.5})
    partials = requests(feed(session, speech(2.1)), "partial")
    assert [m.transcript for m in messages(session.inference_done(partials[0], result("ask not")))] == ["ask not"]
    assert messages(session.inference_done(partials[1], result("ask not"))) == []  # the same words again
    assert [m.transcript for m in messages(session.inference_done(partials[2], result("ask not what")))] == ["ask not what"]
    [final] = requests(feed(session, silence(0.5)))
    session.inference_done(final, result("ask not what"))
    later = requests(feed(session, speech(1.1)), "partial")
    # The next utterance's partial with the same words is news: a new number.
    assert [m.transcription_num for m in messages(session.inference_done(later[0], result("ask not what")))] == [1]


def feed_in_real_time(session: Session, audio: np.ndarray, start: float = 0.0, frame_ms: int = 20) -> list:
    data, step, events = pcm(audio), RATE * frame_ms // 1000 * 2, []
    for n, i in enumerate(range(0, len(data), step)):
        events += session.receive_bytes(data[i : i + step], now=start + n * frame_ms / 1000)
    return events


def test_audio_sent_faster_than_real_time_gets_its_latest_partial_before_the_final() -> None:
    session = make_session(streaming_params={"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.5})
    events = feed(session, np.concatenate([speech(2.1), silence(0.5)]))  # all at the same instant
    asked = requests(events)
    assert [r.kind for r in asked] == ["partial"] * 5 + ["final"]
    partials, owed, final = asked[:-2], asked[-2], asked[-1]  # the owed partial queued before the final
    assert owed.before_final and not any(p.before_final for p in partials)
    assert (owed.offset_s, len(owed.audio)) == (partials[-1].offset_s, len(partials[-1].audio))
    for stale in partials:  # the normal ones come back after the speech ended: not sent
        assert session.inference_done(stale, result("stale")) == []
    assert messages(session.inference_done(final, result("so far and more"))) == []  # waits
    sent = messages(session.inference_done(owed, result("so far")))
    assert [(m.transcription_num, m.is_final, m.transcript) for m in sent] == [(0, False, "so far"), (0, True, "so far and more")]


def test_a_real_time_stream_gets_no_catch_up_partial() -> None:
    session = make_session(streaming_params={"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.5})
    events = feed_in_real_time(session, np.concatenate([speech(2.1), silence(0.5)]))
    assert [r.kind for r in requests(events)] == ["partial"] * 4 + ["final"]
    assert not any(r.before_final for r in requests(events))


def test_no_catch_up_partial_once_a_partial_of_the_utterance_was_sent() -> None:
    session = make_session(streaming_params={"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.5})
    partials = requests(feed(session, speech(1.1)), "partial")
    assert messages(session.inference_done(partials[-1], result("so far")))
    assert [r.kind for r in requests(feed(session, np.concatenate([speech(1.0), silence(0.5)])))] == ["partial", "partial", "final"]


def test_no_partials_unless_enabled_or_during_silence() -> None:
    assert requests(feed(make_session(), speech(2.0)), "partial") == []
    session = make_session(
        streaming_params={"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.1},
        streaming_vad_config={"min_silence_duration_ms": 2000},
    )
    feed(session, speech(0.512))  # whole windows: the first silent window is all silence
    assert requests(feed(session, silence(1.5)), "partial") == []


# --------------------------------------------------------------------------- long speech and control


def pcm_rounded(audio: np.ndarray) -> np.ndarray:
    """The audio as the session decodes it from pcm()."""
    return np.frombuffer(pcm(audio), dtype="<i2").astype(np.float32) / 32768


def window_at(seconds: float) -> int:
    return int(seconds * RATE) // WINDOW * WINDOW


def test_forty_seconds_of_speech_give_a_final_at_the_limit_and_one_after() -> None:
    session = make_session()
    audio = speech(40.0)
    pause = window_at(29.0)  # five quieter windows: where the cut should go, at their middle
    audio[pause : pause + 5 * WINDOW] *= 0.2
    events = feed(session, audio)
    [first] = requests(events)
    assert first.offset_s == 0.0
    assert len(first.audio) == pause + 2 * WINDOW  # inside the last 2 s before 30 s
    events = session.receive_text('{"terminate_session": true}', now=1.0)
    [second] = requests(events)
    assert second.transcription_num == 1
    # The next utterance starts exactly at the cut: together they are the audio, each sample once.
    assert start_s(second) == pytest.approx(len(first.audio) / RATE)
    np.testing.assert_array_equal(np.concatenate([first.audio, own_audio(second)]), pcm_rounded(audio))
    # The second hears as much of the first as fits Whisper's window with it, up to 8 s.
    assert second.context_s == pytest.approx(min(LEFT_CONTEXT_S, 30.0 - len(own_audio(second)) / RATE), abs=1e-3)


def test_the_cut_goes_to_a_pause_not_to_one_quiet_window_inside_a_word() -> None:
    session = make_session()
    audio = speech(40.0)
    stop = window_at(29.6)  # a stop consonant: one window of silence (probability 0.02)
    audio[stop : stop + WINDOW] = 0.0
    pause = window_at(28.6)  # a short pause between words: six windows at probability 0.4
    audio[pause : pause + 6 * WINDOW] *= 0.2
    [first] = requests(feed(session, audio))
    # The middle of the pause (of two equally quiet middles, the later one).
    assert len(first.audio) == pause + 3 * WINDOW


def test_the_length_limit_reached_in_a_pause_ends_the_utterance_at_the_pause() -> None:
    session = make_session(streaming_vad_config={"min_silence_duration_ms": 3000})
    [final] = requests(feed(session, np.concatenate([speech(29.9), silence(1.0), speech(2.0)])))
    assert final.offset_s == 0.0 and 29.9 <= len(final.audio) / RATE <= 30.0


def test_max_duration_setting_is_honoured() -> None:
    session = make_session(streaming_params={"final_transcript_max_duration_s": 5})
    finals = requests(feed(session, speech(12.0)))
    assert len(finals) == 2
    assert all(3.0 <= len(own_audio(f)) / RATE <= 5.0 for f in finals)


def test_finalize_ends_the_utterance_now_and_the_session_goes_on() -> None:
    session = make_session()
    feed(session, speech(1.0))
    [final] = requests(session.receive_text("finalize", now=1.0))
    assert len(final.audio) == RATE
    assert session.state is State.STREAMING
    [next_final] = requests(feed(session, np.concatenate([speech(0.5), silence(0.5)])))
    assert next_final.transcription_num == 1


def test_terminate_flushes_speech_then_closes_1000_after_its_final() -> None:
    session = make_session()
    feed(session, speech(1.0))
    events = session.receive_text('{"type": "terminate"}', now=1.0)
    [final] = requests(events)
    assert closes(events) == []  # not before the final is out
    assert session.receive_bytes(pcm(speech(1.0)), now=1.1) == []  # no new audio while closing
    events = session.inference_done(final, result("bye"))
    assert [m.transcript for m in messages(events)] == ["bye"]
    assert closes(events)[0].code == CloseCode.NORMAL


def test_terminate_with_nothing_buffered_closes_at_once() -> None:
    session = make_session()
    feed(session, silence(1.0))
    assert closes(session.receive_text('{"terminate_session": true}', now=1.0))[0].code == CloseCode.NORMAL


def test_shutdown_flushes_then_closes_1001() -> None:
    session = make_session()
    feed(session, speech(1.0))
    events = session.shutdown()
    [final] = requests(events)
    events = session.inference_done(final, result("going"))
    assert messages(events)[0].transcript == "going"
    assert closes(events)[0].code == CloseCode.GOING_AWAY


def test_inference_failure_closes_1011_naming_the_session() -> None:
    session = make_session()
    [final] = requests(feed(session, np.concatenate([speech(1.0), silence(0.5)])))
    events = session.inference_failed(final, RuntimeError("boom"))
    error = messages(events)[0]
    assert error.error.code is ErrorCode.INTERNAL_ERROR and "sess-1" in error.error.message
    assert closes(events)[0].code == CloseCode.INTERNAL_ERROR


def test_language_detection_only_sends_one_language_message_per_utterance() -> None:
    session = make_session(
        MULTI,
        whisper_params={"audio_language": "auto", "language_detection_only": True},
        streaming_params={"enable_partial_transcripts": True},
    )
    events = feed(session, np.concatenate([speech(1.0), silence(0.5)]))
    [final] = requests(events)
    assert final.detect_only and requests(events, "partial") == []
    [message] = messages(session.inference_done(final, Result(segments=(), language="de", language_prob=0.97)))
    assert isinstance(message, Transcription)
    assert (message.transcript, message.language_code, message.language_prob, message.segments) == ("", "de", 0.97, [])
    assert message.confidence is None


def test_no_audio_is_lost_across_odd_frame_boundaries() -> None:
    session = make_session(streaming_vad_config={"speech_pad_ms": 0})
    data = pcm(np.concatenate([speech(1.024), silence(0.5)]))
    events = []
    for i in range(0, len(data), 333):  # odd sizes split samples in two
        events += session.receive_bytes(data[i : i + 333], now=0.0)
    [final] = requests(events)
    assert len(final.audio) == int(1.024 * RATE)


# --------------------------------------------------------------------------- drafts and lag


def test_a_draft_of_the_final_is_asked_for_when_the_silence_begins() -> None:
    session = make_session(drafts=True, streaming_vad_config={"min_silence_duration_ms": 300, "speech_pad_ms": 30})
    events = feed(session, np.concatenate([speech(1.024), silence(0.064)]))
    [draft] = requests(events)
    assert draft.kind == "draft" and draft.transcription_num == 0
    # Exactly the audio the final will have: the speech and its pad.
    assert draft.offset_s == 0.0 and len(draft.audio) == 1.024 * RATE + 30 * RATE // 1000
    # Recognised during the silence window, it is sent as the final once the window has passed,
    # without recognising the same audio again.
    assert session.inference_done(draft, result("early")) == []
    assert messages(feed(session, silence(0.1))) == []
    events = feed(session, silence(0.2))
    assert requests(events) == []
    [final] = messages(events)
    assert (final.transcription_num, final.is_final, final.transcript) == (0, True, "early")


def test_a_final_due_before_its_draft_is_done_asks_for_the_same_audio() -> None:
    session = make_session(drafts=True)
    [draft] = requests(feed(session, np.concatenate([speech(1.0), silence(0.1)])))
    [final] = requests(feed(session, silence(0.4)))
    # The scheduler recognises this once (the waiting or running draft becomes the final).
    assert final.kind == "final" and final.replaces == draft.request_id
    assert (final.offset_s, len(final.audio)) == (draft.offset_s, len(draft.audio))
    assert session.inference_done(draft, result("late draft")) == []  # the final's own result counts
    [message] = messages(session.inference_done(final, result("late draft")))
    assert message.is_final and message.transcript == "late draft"


def test_speech_that_resumes_withdraws_the_draft() -> None:
    session = make_session(drafts=True)
    [draft] = requests(feed(session, np.concatenate([speech(1.0), silence(0.1)])))
    events = feed(session, speech(0.5))
    assert [e.request for e in events if isinstance(e, CancelInference)] == [draft]
    assert session.inference_done(draft, result("stale")) == []
    events = feed(session, silence(0.5))
    [second_draft, final] = requests(events)
    assert second_draft.kind == "draft" and final.kind == "final" and final.replaces == second_draft.request_id
    assert len(final.audio) > len(draft.audio) + 0.5 * RATE - 1


def test_with_the_context_prompt_a_draft_waits_until_its_context_is_known() -> None:
    session = Session(
        "sess-3", model=ENGLISH, count_tokens=lambda t: len(t.split()), new_vad=LevelVAD,
        draft_finals=True, context_prompt=True,
    )
    session.receive_text("{}", now=0.0)
    [draft, first] = requests(feed(session, np.concatenate([speech(0.5), silence(0.5)])))
    assert (draft.kind, first.kind, first.replaces) == ("draft", "final", draft.request_id)
    # The next utterance's silence begins while the first final is still out: no draft, since
    # its prompt would be that final's text; the final waits for it.
    assert requests(feed(session, np.concatenate([speech(0.5), silence(0.5)]))) == []
    events = session.inference_done(first, result("ask not"))
    [second] = requests(events)
    assert (second.kind, second.transcription_num, second.options.context) == ("final", 1, "ask not")
    # Once every final is out, drafts come back, with the latest final as their context.
    session.inference_done(second, result("what your country"))
    [third_draft, third] = requests(feed(session, np.concatenate([speech(0.5), silence(0.5)])))
    assert third_draft.kind == "draft" and third_draft.options.context == "what your country"
    assert third.replaces == third_draft.request_id and third.options == third_draft.options


def test_no_drafts_unless_enabled() -> None:
    session = make_session()
    [final] = requests(feed(session, np.concatenate([speech(1.0), silence(0.5)])))
    assert final.kind == "final"


def test_lag_counts_audio_received_since_the_oldest_final_still_waiting() -> None:
    session = make_session(streaming_vad_config={"min_silence_duration_ms": 300, "speech_pad_ms": 0})
    feed(session, speech(1.024))
    assert session.lag_s < 0.04  # speech still going on is not lag
    [final] = requests(feed(session, silence(0.32)))
    assert session.lag_s == pytest.approx(0.32, abs=0.04)
    feed(session, silence(2.0))
    assert session.lag_s == pytest.approx(2.32, abs=0.04)  # the final still has not come back
    session.inference_done(final, result("done"))
    assert session.lag_s < 0.04


def test_vad_in_runs_of_three_windows_finds_the_same_utterances_a_little_later() -> None:
    audio = np.concatenate([speech(1.0), silence(0.5), speech(0.7), silence(0.5)])
    single = requests(feed(make_session(), audio))
    batched_session = Session("sess-1", model=ENGLISH, count_tokens=len, new_vad=LevelVAD, vad_batch=3)
    batched_session.receive_text("{}", now=0.0)
    batched = requests(feed(batched_session, audio))
    assert [(r.offset_s, len(r.audio)) for r in batched] == [(r.offset_s, len(r.audio)) for r in single]
    # Speech not yet scored is still seen by finalize and terminate.
    late = Session("sess-2", model=ENGLISH, count_tokens=len, new_vad=LevelVAD, vad_batch=3)
    late.receive_text("{}", now=0.0)
    assert requests(feed(late, np.concatenate([silence(0.96), speech(0.064)]))) == []
    [final] = requests(late.receive_text("finalize", now=1.0))
    assert len(final.audio) >= 0.064 * RATE


def test_with_every_earlier_final_out_the_context_starts_at_the_words_sent_and_they_are_the_prefix() -> None:
    session = make_session(streaming_vad_config={"min_silence_duration_ms": 100})
    [first] = requests(feed(session, np.concatenate([silence(1.0), speech(1.0), silence(0.3)])))
    tone = 1.0 - first.offset_s
    session.inference_done(first, result("hello there", start=tone + 0.1, words=True))  # sent: words at 1.1 and 1.2 s
    [second] = requests(feed(session, np.concatenate([speech(1.0), silence(0.3)])))
    assert second.options.prefix == " hello there"
    assert second.offset_s == pytest.approx(1.1, abs=1e-4)  # the first word sent, not 8 s of audio
    # While an earlier final is still owed (the second), its words are not known: audio only, cut by time.
    [third] = requests(feed(session, np.concatenate([speech(1.0), silence(0.3)])))
    assert third.options.prefix is None and third.context_s > 3.0  # the audio the stream holds, not a word boundary


def test_a_final_taking_over_its_draft_keeps_the_draft_s_context_and_prefix() -> None:
    session = make_session(drafts=True, streaming_vad_config={"min_silence_duration_ms": 300})
    [first] = requests(feed(session, np.concatenate([speech(1.0), silence(0.4)])), "final")
    [draft] = requests(feed(session, np.concatenate([speech(1.0), silence(0.1)])), "draft")
    assert draft.options.prefix is None  # the first final is not out
    session.inference_done(first, result("hello there", start=0.1, words=True))  # out now, during the silence
    [final] = requests(feed(session, silence(0.3)), "final")
    assert final.replaces == draft.request_id
    assert (final.offset_s, final.context_s, final.options.prefix) == (draft.offset_s, draft.context_s, None)


# --------------------------------------------------------------------------- every word in its turn


class SoftVAD(LevelVAD):
    """LevelVAD, with a soft word: a peak of 0.02-0.05 scores 0.25, under the end threshold
    (0.35) and over the onset floor (0.2), as Silero scores a speaker trailing off."""

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        probs = super().probabilities(audio)
        peaks = np.abs(audio.reshape(-1, WINDOW)).max(axis=1)
        return np.where((peaks > 0.02) & (peaks <= 0.05), 0.25, probs).astype(np.float32)


def test_a_soft_last_word_is_in_its_own_final_and_the_draft_waits_for_it() -> None:
    session = Session("sess-4", model=ENGLISH, count_tokens=len, new_vad=SoftVAD, draft_finals=True)
    session.receive_text(json.dumps({"streaming_vad_config": {"min_silence_duration_ms": 500, "speech_pad_ms": 32}}), now=0.0)
    # 1.024 s of speech, a soft word of 0.32 s, then silence.
    events = feed(session, np.concatenate([speech(1.024), speech(0.32, level=0.04)]))
    assert requests(events) == []  # the voice is still heard: where the final ends is not known yet
    [draft] = requests(feed(session, silence(0.032)))  # fallen quiet: the soft word is over
    # The draft's audio, and so the final's, reaches the soft word's end and the pad after it.
    assert draft.kind == "draft" and draft.offset_s + len(draft.audio) / RATE == pytest.approx(1.024 + 0.32 + 0.032)
    session.inference_done(draft, result("ask not what", words=True))
    events = feed(session, silence(0.5))
    assert requests(events) == []  # the draft is the final: not recognised again
    [final] = messages(events)
    assert final.is_final and final.transcript == "ask not what"


def test_a_final_empty_after_its_partial_is_recognised_again_on_its_own_audio() -> None:
    session = make_session(
        streaming_params={"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.5},
        streaming_vad_config={"min_silence_duration_ms": 300},
    )
    session.inference_done(requests(feed(session, speech(1.5)), "partial")[0], result("okay"))
    [first] = requests(feed(session, silence(0.4)), "final")
    session.inference_done(first, result("okay.", start=0.1, words=True))
    [shown] = messages(session.inference_done(requests(feed(session, speech(0.6)), "partial")[0], result("bye")))
    assert (shown.transcription_num, shown.transcript) == (1, "bye")
    [final] = requests(feed(session, silence(0.4)), "final")
    assert final.options.prefix == " okay." and final.context_s > 0  # anchored on the words sent
    # Anchored there, Whisper closed the text: no words. Once more, on the utterance's audio alone.
    events = session.inference_done(final, result(""))
    assert messages(events) == []  # the partial's words are not taken back yet
    [again] = requests(events)
    assert (again.kind, again.again, again.transcription_num) == ("final", True, 1)
    assert (again.context_s, again.options.prefix, again.options.context) == (0.0, None, None)
    assert np.array_equal(again.audio, own_audio(final)) and again.offset_s == pytest.approx(start_s(final))
    assert again.speech_at and again.speech_at[0] == pytest.approx(final.speech_at[0] - final.context_s)
    assert again.heard_from_s == pytest.approx(final.heard_from_s - final.context_s)
    spoken = again.heard_from_s + 0.1  # in the retry's audio; its times are the stream's again
    [message] = messages(session.inference_done(again, result("bye", start=spoken, words=True)))
    assert (message.transcription_num, message.is_final, message.transcript) == (1, True, "bye")
    assert message.segments[0].start_time == pytest.approx(start_s(final) + spoken, abs=1e-3)


def test_a_final_is_recognised_again_once_and_only_after_a_partial_with_words() -> None:
    params = {"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.5}
    vad = {"min_silence_duration_ms": 300}
    # No partial was shown: an empty final is non-speech, skipped, not recognised again.
    session = make_session(streaming_vad_config=vad)
    [first] = requests(feed(session, np.concatenate([speech(1.0), silence(0.4)])))
    session.inference_done(first, result("okay.", start=0.1, words=True))
    [second] = requests(feed(session, np.concatenate([speech(0.6), silence(0.4)])))
    assert second.context_s > 0 and session.inference_done(second, result("")) == []
    # The stream's first utterance has no context to blame: its empty final goes out as it is.
    session = make_session(streaming_params=params, streaming_vad_config=vad)
    session.inference_done(requests(feed(session, speech(1.0)), "partial")[0], result("okay"))
    [final] = requests(feed(session, silence(0.4)), "final")
    assert final.context_s == 0 and final.options.prefix is None
    [empty] = messages(session.inference_done(final, result("")))
    assert (empty.is_final, empty.transcript) == (True, "")
    # Recognised again and still empty: sent empty, the number closed; never a third time.
    session.inference_done(requests(feed(session, speech(0.6)), "partial")[0], result("bye"))
    [second] = requests(feed(session, silence(0.4)), "final")
    [again] = requests(session.inference_done(second, result("")))
    events = session.inference_done(again, result(""))
    assert requests(events) == [] and [(m.is_final, m.transcript) for m in messages(events)] == [(True, "")]
