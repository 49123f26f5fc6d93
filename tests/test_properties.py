"""Properties of the input parsers, checked on generated input (hypothesis), and a fuzz run of
the whole session for a fixed time.

Whatever a client sends, the metadata parser answers with metadata or an invalid_metadata error
naming a field the client sent; the control parser with a control or unknown_control; the audio
decoders with the same samples however the bytes were framed, or invalid_audio; and a session
fed any mix of frames, results and time answers with protocol events only.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from whisperwire.audio import AudioDecoder
from whisperwire.values import SAMPLE_RATE
from whisperwire.engine import ModelInfo, Result, SegmentResult
from whisperwire.protocol import (
    WHISPER_LANGUAGES,
    Control,
    ErrorCode,
    ErrorMessage,
    Metadata,
    ProtocolError,
    Transcription,
    parse_control,
    parse_metadata,
)
from whisperwire.session import CancelInference, CloseConnection, InferenceRequest, RunInference, SendMessage, Session, State

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- metadata

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """The schema's key tree, read from the models so it cannot drift from them."""
    tree: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        nested = info.annotation if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) else None
        tree[name] = _fields(nested) if nested else None
    return tree


SCHEMA = _fields(Metadata)
LEGACY_SCHEMA = {
    "vad_params": SCHEMA["streaming_vad_config"],
    "streaming_whisper_params": dict.fromkeys(["encoding", "sample_rate", "enable_partial_transcripts", "audio_language"]),
    "whisper_sampling_params": SCHEMA["whisper_params"]["whisper_sampling_params"],
}
# Where the parser folds legacy sections (PROTOCOL.md §3): errors may name the current path.
FOLDED_INTO = {"vad_params": {"streaming_vad_config"}, "streaming_whisper_params": {"streaming_params", "whisper_params"}, "whisper_sampling_params": {"whisper_params"}}


def near_valid(tree: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the schema's own keys (and a stray one) holding plausible or absurd values."""
    values = {
        key: (near_valid(sub) | json_values) if sub else (json_scalars | json_values)
        for key, sub in tree.items()
    }
    return st.fixed_dictionaries({}, optional={**values, "bogus": json_scalars})


metadata_objects = near_valid({**SCHEMA, **LEGACY_SCHEMA})


def check_outcome(text: str, sent: Any) -> None:
    try:
        parse_metadata(text)
    except ProtocolError as error:
        assert error.code is ErrorCode.INVALID_METADATA
        assert error.message and error.close_code == 1007
        if error.field is not None:
            assert isinstance(sent, dict), error.field
            sent_keys = set(sent) | {name for key in sent for name in FOLDED_INTO.get(key, ())}
            # Keys may hold dots themselves, so compare whole prefixes, not a split.
            assert any(error.field == key or error.field.startswith(key + ".") for key in sent_keys), (error.field, sorted(sent))


@PROPERTY
@given(st.text(max_size=200))
def test_any_text_parses_or_gets_invalid_metadata(text: str) -> None:
    check_outcome(text, None)


@PROPERTY
@given(json_values)
def test_any_json_parses_or_gets_invalid_metadata(value: Any) -> None:
    check_outcome(json.dumps(value), value)


@PROPERTY
@given(metadata_objects)
def test_schema_shaped_objects_parse_or_name_a_field_that_was_sent(value: dict[str, Any]) -> None:
    check_outcome(json.dumps(value), value)


finite = {"allow_nan": False, "allow_infinity": False}
languages = st.sampled_from(sorted(WHISPER_LANGUAGES))
valid_metadata = st.fixed_dictionaries(
    {},
    optional={
        "streaming_vad_config": st.fixed_dictionaries(
            {},
            optional={
                "threshold": st.floats(0, 1),
                "min_silence_duration_ms": st.integers(0, 10_000),
                "speech_pad_ms": st.integers(0, 2_000),
            },
        ),
        "streaming_params": st.fixed_dictionaries(
            {},
            optional={
                "encoding": st.sampled_from(["pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"]),
                "sample_rate": st.integers(8_000, 48_000),
                "enable_partial_transcripts": st.booleans(),
                "partial_transcript_interval_s": st.floats(0.1, 10),
                "final_transcript_max_duration_s": st.integers(1, 30),
            },
        ),
        "whisper_params": st.fixed_dictionaries(
            {},
            optional={
                "prompt": st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=50),
                "audio_language": languages | st.just("auto"),
                "language_detection_only": st.booleans(),
                "language_options": st.lists(languages, max_size=5),
                "use_dynamic_preprocessing": st.booleans(),
                "show_word_timestamps": st.booleans(),
                "whisper_sampling_params": st.fixed_dictionaries(
                    {},
                    optional={
                        "beam_width": st.integers(1, 5),
                        "length_penalty": st.floats(**finite),
                        "repetition_penalty": st.floats(min_value=0, exclude_min=True, **finite),
                        "beam_search_diversity_rate": st.floats(min_value=0, **finite),
                        "no_repeat_ngram_size": st.integers(0, 100),
                    },
                ),
            },
        ),
    },
)


@PROPERTY
@given(valid_metadata)
def test_valid_metadata_parses_to_exactly_what_was_sent(value: dict[str, Any]) -> None:
    metadata = parse_metadata(json.dumps(value))

    def same(model: BaseModel, given: dict[str, Any]) -> None:
        for key, expected in given.items():
            actual = getattr(model, key)
            if isinstance(expected, dict):
                same(actual, expected)
            else:
                assert actual == expected, key

    same(metadata, value)


@PROPERTY
@given(st.text(max_size=100) | json_values.map(json.dumps))
def test_any_text_after_metadata_is_a_control_or_unknown_control(text: str) -> None:
    try:
        control = parse_control(text)
    except ProtocolError as error:
        assert error.code is ErrorCode.UNKNOWN_CONTROL and error.close_code is None
        assert len(error.message) < 400  # the frame is quoted, cut short
    else:
        assert control in (Control.FINALIZE, Control.TERMINATE)


# --------------------------------------------------------------------------- audio decoders

ENCODINGS = ["pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"]
RATES = [8_000, 11_025, 16_000, 22_050, 44_100, 48_000]
WIDTH = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1, "pcm_alaw": 1}


def decode(encoding: str, rate: int, frames: list[bytes]) -> np.ndarray | ProtocolError:
    decoder = AudioDecoder(encoding, rate)  # type: ignore[arg-type]
    try:
        parts = [decoder.decode(frame) for frame in frames]
    except ProtocolError as error:
        return error
    return np.concatenate([*parts, decoder.flush()])


def framed(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in zip(edges[:-1], edges[1:])]


@PROPERTY
@given(st.sampled_from(ENCODINGS), st.sampled_from(RATES), st.binary(max_size=3_000), st.lists(st.integers(0, 3_000), max_size=12))
def test_decoding_does_not_depend_on_how_bytes_are_framed(encoding: str, rate: int, data: bytes, cuts: list[int]) -> None:
    whole = decode(encoding, rate, [data])
    pieces = decode(encoding, rate, framed(data, cuts))
    if isinstance(whole, ProtocolError):
        # Only non-finite floats are refused, and however they were framed.
        assert encoding == "pcm_f32le" and whole.code is ErrorCode.INVALID_AUDIO and whole.close_code == 1007
        assert isinstance(pieces, ProtocolError) and pieces.code is ErrorCode.INVALID_AUDIO
        assert not np.isfinite(np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4")).all()
        return
    assert isinstance(pieces, np.ndarray)
    np.testing.assert_allclose(pieces, whole, atol=1e-6)
    assert whole.dtype == np.float32 and np.isfinite(whole).all() and np.abs(whole).max(initial=0) <= 1.0
    samples_in = len(data) // WIDTH[encoding]
    if rate == SAMPLE_RATE:
        assert len(whole) == samples_in
    else:  # the resampler keeps the timeline: the output is as long as the input lasts
        assert abs(len(whole) - samples_in * SAMPLE_RATE / rate) <= 2


@PROPERTY
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=400))
def test_finite_floats_decode_clipped_and_in_order(values: list[float]) -> None:
    decoded = decode("pcm_f32le", SAMPLE_RATE, [np.array(values, dtype="<f4").tobytes()])
    assert isinstance(decoded, np.ndarray)
    np.testing.assert_array_equal(decoded, np.clip(np.array(values, dtype=np.float32), -1, 1))


@PROPERTY
@given(st.binary(min_size=2, max_size=2_000).map(lambda b: b[: len(b) // 2 * 2]))
def test_s16le_is_the_integer_over_32768(data: bytes) -> None:
    decoded = decode("pcm_s16le", SAMPLE_RATE, [data])
    assert isinstance(decoded, np.ndarray)
    np.testing.assert_array_equal(decoded, np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768)


# --------------------------------------------------------------------------- the session, fuzzed

FUZZ_SECONDS = float(os.environ.get("WHISPERWIRE_FUZZ_SECONDS", "20"))
ENGLISH = ModelInfo(name="tiny.en", multilingual=False, languages=frozenset({"en"}))

def _noise_or_silence(n: int) -> bytes:
    """n × 0.1 s of loud noise (odd n) or silence (even n), s16le: utterances start and end."""
    level = 0.3 if n % 2 else 0.0
    audio = np.random.default_rng(n).normal(0, level, 1_600 * n).clip(-1, 1)
    return (audio * 32767).astype("<i2").tobytes()


frames = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=60)),
    st.tuples(st.just("text"), metadata_objects.map(json.dumps)),
    st.tuples(st.just("text"), st.sampled_from(['"finalize"', "finalize", '{"type": "finalize"}', '{"type": "terminate"}', '{"terminate_session": true}'])),
    st.tuples(st.just("bytes"), st.binary(max_size=4_000)),
    # Loud noise and silence in s16le: enough to start and end utterances.
    st.tuples(st.just("bytes"), st.integers(1, 40).map(_noise_or_silence)),
    st.tuples(st.just("time"), st.floats(0, 120)),
    st.tuples(st.just("result"), st.integers(0, 3)),
    st.tuples(st.just("fail"), st.integers(0, 3)),
    st.tuples(st.just("shutdown"), st.none()),
)


def _result(request: InferenceRequest, text: str) -> Result:
    duration = len(request.audio) / SAMPLE_RATE
    segment = SegmentResult(text, 0.0, duration, -0.3, 3, 0.01, 1.2, None)
    return Result(segments=(segment,) if text else (), language="en", language_prob=None)


class Client:
    """What a client would see: the invariants of PROTOCOL.md §4 checked as messages arrive."""

    def __init__(self) -> None:
        self.closed = False
        self.close_code: int | None = None
        self.finals: list[int] = []
        self.partials: set[int] = set()

    def see(self, events: list[Any]) -> list[InferenceRequest]:
        asked = []
        for event in events:
            assert not self.closed, f"{event} after the close"
            if isinstance(event, CloseConnection):
                assert int(event.code) in (1000, 1001, 1003, 1007, 1008, 1011), event
                self.closed, self.close_code = True, int(event.code)
            elif isinstance(event, RunInference):
                asked.append(event.request)
            elif isinstance(event, CancelInference):
                pass  # a withdrawn draft may have run already: its result can still come
            else:
                assert isinstance(event, SendMessage)
                self._message(event.message)
        return asked

    def _message(self, message: Transcription | ErrorMessage) -> None:
        if isinstance(message, ErrorMessage):
            return
        num = message.transcription_num
        assert not self.finals or num > self.finals[-1], "messages went back in number"
        if message.is_final:
            self.finals.append(num)
            self.partials.discard(num)
        else:
            self.partials.add(num)
        assert message.confidence is None or 0 <= message.confidence <= 1
        assert all(math.isfinite(s.start_time) and s.start_time <= s.end_time for s in message.segments)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(frames, max_size=40),
    st.lists(st.sampled_from(["", "words", "more words"]), min_size=1, max_size=5),
    st.booleans(),
    st.integers(1, 4),
    st.booleans(),
)
def _fuzz_session(vad, steps: list[tuple[str, Any]], texts: list[str], drafts: bool, vad_batch: int, context: bool) -> None:
    session = Session(
        "fuzz", model=ENGLISH, count_tokens=lambda t: len(t.split()), new_vad=vad.new_stream,
        draft_finals=drafts, vad_batch=vad_batch, context_prompt=context,
    )
    client, now, pending = Client(), 0.0, []
    for kind, value in steps:
        if kind == "text":
            events = session.receive_text(value, now)
        elif kind == "bytes":
            events = session.receive_bytes(value, now)
        elif kind == "time":
            now += value
            events = session.timeout(now)
        elif kind in ("result", "fail") and pending:
            request = pending.pop(value % len(pending))
            if kind == "fail":
                events = session.inference_failed(request, RuntimeError("injected"))
            else:
                events = session.inference_done(request, _result(request, texts[value % len(texts)]))
        elif kind == "shutdown":
            events = session.shutdown()
        else:
            continue
        pending += client.see(events)
    # With every result in, a closing session has closed, and a normal close left no partial
    # without its final.
    while pending and not client.closed:
        request = pending.pop(0)
        pending += client.see(session.inference_done(request, _result(request, texts[0])))
    assert session.state is not State.CLOSING, "a closing session with every result in did not close"
    if client.close_code in (1000, 1001):
        assert not client.partials, f"partials without a final: {client.partials}"


def test_fuzz_the_session_for_a_fixed_time(vad) -> None:
    """Random frames, results, failures and clock jumps for WHISPERWIRE_FUZZ_SECONDS (20 s in CI)."""
    deadline = time.monotonic() + FUZZ_SECONDS
    runs = 0
    while time.monotonic() < deadline:
        _fuzz_session(vad)
        runs += 1
    assert runs >= 1
