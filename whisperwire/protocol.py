"""The wire protocol: metadata, control messages, server messages and error codes.

Everything here is pure data. PROTOCOL.md (shared/spec) is the contract; this module is its
executable form.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# The language codes Whisper has tokens for (large-v3 adds "yue"; a loaded model's own list is
# ModelInfo.languages). Our own copy: the protocol must not import a model library, and
# tests/test_protocol.py keeps it equal to faster-whisper's.
WHISPER_LANGUAGES: frozenset[str] = frozenset(
    """
    af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi
    hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn
    no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi
    yi yo zh yue
    """.split()
)
MAX_METADATA_BYTES = 64 * 1024
MAX_PROMPT_TOKENS = 224


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class ErrorCode(enum.StrEnum):
    INVALID_METADATA = "invalid_metadata"
    BINARY_BEFORE_METADATA = "binary_before_metadata"
    INVALID_AUDIO = "invalid_audio"
    UNKNOWN_CONTROL = "unknown_control"
    METADATA_TIMEOUT = "metadata_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    FRAME_TOO_LARGE = "frame_too_large"
    INTERNAL_ERROR = "internal_error"
    SERVER_BUSY = "server_busy"
    SERVER_BEHIND = "server_behind"
    CLIENT_TOO_SLOW = "client_too_slow"


# The close code that follows each error; None means the session stays open.
CLOSE_CODE_FOR: dict[ErrorCode, CloseCode | None] = {
    ErrorCode.INVALID_METADATA: CloseCode.INVALID_PAYLOAD,
    ErrorCode.BINARY_BEFORE_METADATA: CloseCode.UNSUPPORTED_DATA,
    ErrorCode.INVALID_AUDIO: CloseCode.INVALID_PAYLOAD,
    ErrorCode.UNKNOWN_CONTROL: None,
    ErrorCode.METADATA_TIMEOUT: CloseCode.POLICY_VIOLATION,
    ErrorCode.IDLE_TIMEOUT: CloseCode.POLICY_VIOLATION,
    ErrorCode.FRAME_TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.INTERNAL_ERROR: CloseCode.INTERNAL_ERROR,
    ErrorCode.SERVER_BUSY: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.SERVER_BEHIND: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.CLIENT_TOO_SLOW: CloseCode.POLICY_VIOLATION,
}


class ProtocolError(Exception):
    """An error the client caused or must hear about; carries what goes on the wire."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    @property
    def close_code(self) -> CloseCode | None:
        return CLOSE_CODE_FOR[self.code]


# --------------------------------------------------------------------------- metadata


class _Strict(BaseModel):
    # Strict: a "0.5" string or a 1 for a bool is a client bug worth reporting, not coercing.
    # Python's json accepts NaN and Infinity, which no setting here can mean.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


Encoding = Literal["pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"]


class VADConfig(_Strict):
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    min_silence_duration_ms: Annotated[int, Field(ge=0, le=10_000)] = 300
    speech_pad_ms: Annotated[int, Field(ge=0, le=2_000)] = 30


class StreamingParams(_Strict):
    encoding: Encoding = "pcm_s16le"
    sample_rate: Annotated[int, Field(ge=8_000, le=48_000)] = 16_000
    enable_partial_transcripts: bool = False
    partial_transcript_interval_s: Annotated[float, Field(ge=0.1, le=10.0)] = 0.5
    final_transcript_max_duration_s: Annotated[int, Field(ge=1, le=30)] = 30


class SamplingParams(_Strict):
    beam_width: Annotated[int, Field(ge=1, le=5)] = 1
    length_penalty: float = 1.0
    repetition_penalty: Annotated[float, Field(gt=0.0)] = 1.0
    # Accepted for compatibility; CTranslate2 has no diverse beam search (docs/protocol.md).
    beam_search_diversity_rate: Annotated[float, Field(ge=0.0)] = 0.0
    no_repeat_ngram_size: Annotated[int, Field(ge=0)] = 0


def _check_language(code: str) -> str:
    if code not in WHISPER_LANGUAGES:
        raise ValueError(f"unknown language code {code!r}")
    return code


class WhisperParams(_Strict):
    prompt: str | None = None
    audio_language: str = "en"
    language_detection_only: bool = False
    language_options: list[str] = Field(default_factory=list)
    use_dynamic_preprocessing: bool = False
    show_word_timestamps: bool = False
    whisper_sampling_params: SamplingParams = SamplingParams()

    @field_validator("prompt")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        # JSON escapes can carry a lone surrogate, which no tokenizer accepts.
        if value is not None and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
        return value

    @field_validator("audio_language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        return value if value == "auto" else _check_language(value)

    @field_validator("language_options")
    @classmethod
    def _known_options(cls, value: list[str]) -> list[str]:
        return [_check_language(code) for code in value]


class AsrOptions(_Strict):
    beam_size: Annotated[int, Field(ge=1, le=5)] | None = None
    length_penalty: float | None = None


class Metadata(_Strict):
    streaming_vad_config: VADConfig = VADConfig()
    streaming_params: StreamingParams = StreamingParams()
    whisper_params: WhisperParams = WhisperParams()
    asr_options: AsrOptions | None = None
    include_timing_info: Any = None  # accepted and ignored (PROTOCOL.md §3)

    @property
    def sampling(self) -> SamplingParams:
        return self.whisper_params.whisper_sampling_params


_LEGACY_STREAMING_KEYS = {"encoding", "sample_rate", "enable_partial_transcripts"}
_LEGACY_WHISPER_KEYS = {"audio_language"}


def _normalise_legacy(raw: dict[str, Any]) -> dict[str, Any]:
    """Fold the flat legacy schema and the deprecated aliases into the current one."""
    data = dict(raw)

    def merge_into(section: str, values: dict[str, Any], source: str) -> None:
        target = data.get(section, {})
        if not isinstance(target, dict):
            return  # validation reports the wrong type
        for key, value in values.items():
            if key in target:
                given = f"{source}.{key}" if source else key  # "" is the top level
                raise ProtocolError(
                    ErrorCode.INVALID_METADATA,
                    f"{given} conflicts with {section}.{key}; give it once",
                    given,
                )
            target = {**target, key: value}
        data[section] = target

    if "vad_params" in data:
        legacy = data.pop("vad_params")
        if "streaming_vad_config" in data:
            raise ProtocolError(
                ErrorCode.INVALID_METADATA,
                "give either vad_params (legacy) or streaming_vad_config, not both",
                "vad_params",
            )
        data["streaming_vad_config"] = legacy

    if "streaming_whisper_params" in data:
        legacy = data.pop("streaming_whisper_params")
        if not isinstance(legacy, dict):
            raise ProtocolError(
                ErrorCode.INVALID_METADATA,
                "streaming_whisper_params must be an object",
                "streaming_whisper_params",
            )
        unknown = sorted(set(legacy) - _LEGACY_STREAMING_KEYS - _LEGACY_WHISPER_KEYS)
        if unknown:
            raise ProtocolError(
                ErrorCode.INVALID_METADATA,
                f"unknown key {unknown[0]!r} in streaming_whisper_params",
                f"streaming_whisper_params.{unknown[0]}",
            )
        merge_into(
            "streaming_params",
            {k: v for k, v in legacy.items() if k in _LEGACY_STREAMING_KEYS},
            "streaming_whisper_params",
        )
        merge_into(
            "whisper_params",
            {k: v for k, v in legacy.items() if k in _LEGACY_WHISPER_KEYS},
            "streaming_whisper_params",
        )

    if "whisper_sampling_params" in data:
        merge_into(
            "whisper_params",
            {"whisper_sampling_params": data.pop("whisper_sampling_params")},
            "",
        )
    return data


def _apply_asr_options(metadata: Metadata, raw_sampling: Any) -> Metadata:
    """Deprecated asr_options fill only what whisper_sampling_params leaves unset."""
    options = metadata.asr_options
    if options is None:
        return metadata
    given = set(raw_sampling) if isinstance(raw_sampling, dict) else set()
    update: dict[str, Any] = {}
    if options.beam_size is not None and "beam_width" not in given:
        update["beam_width"] = options.beam_size
    if options.length_penalty is not None and "length_penalty" not in given:
        update["length_penalty"] = options.length_penalty
    if not update:
        return metadata
    sampling = metadata.sampling.model_copy(update=update)
    whisper = metadata.whisper_params.model_copy(update={"whisper_sampling_params": sampling})
    return metadata.model_copy(update={"whisper_params": whisper})


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    """A human sentence and the dotted field path for one pydantic error."""
    loc = [str(part) for part in error["loc"]]
    path = ".".join(loc)
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "extra_forbidden":
        parent = ".".join(loc[:-1])
        where = f" in {parent}" if parent else ""
        return f"unknown key {loc[-1]!r}{where}", path
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        return _range_message(path, error), path
    if kind == "literal_error":
        return f"{path} must be one of {ctx.get('expected')}", path
    if kind == "value_error":
        return f"{path}: {ctx.get('error')}", path
    return f"{path}: {error['msg'].lower()}", path


def _range_message(path: str, error: dict[str, Any]) -> str:
    ranges = {
        "streaming_vad_config.threshold": (0, 1),
        "streaming_vad_config.min_silence_duration_ms": (0, 10_000),
        "streaming_vad_config.speech_pad_ms": (0, 2_000),
        "streaming_params.sample_rate": (8_000, 48_000),
        "streaming_params.partial_transcript_interval_s": (0.1, 10),
        "streaming_params.final_transcript_max_duration_s": (1, 30),
        "whisper_params.whisper_sampling_params.beam_width": (1, 5),
        "asr_options.beam_size": (1, 5),
    }
    if path in ranges:
        low, high = ranges[path]
        return f"{path} must be between {low} and {high}"
    return f"{path}: {error['msg'].lower()}"


def parse_metadata(text: str | bytes) -> Metadata:
    """Parse the first text frame; raise ProtocolError(invalid_metadata) naming the fault."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_METADATA_BYTES:
        raise ProtocolError(
            ErrorCode.INVALID_METADATA,
            f"metadata is larger than {MAX_METADATA_BYTES} bytes",
        )
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(
            ErrorCode.INVALID_METADATA, f"metadata is not valid JSON: {exc}"
        ) from None
    except RecursionError:
        # 64 KiB of brackets nests deeper than the interpreter's stack allows.
        raise ProtocolError(ErrorCode.INVALID_METADATA, "metadata is nested too deeply") from None
    if not isinstance(raw, dict):
        raise ProtocolError(
            ErrorCode.INVALID_METADATA,
            f"metadata must be a JSON object, got {type(raw).__name__}",
        )
    data = _normalise_legacy(raw)
    try:
        metadata = Metadata.model_validate(data)
    except ValidationError as exc:
        message, path = _describe(exc.errors()[0])
        raise ProtocolError(ErrorCode.INVALID_METADATA, message, path) from None
    raw_whisper = data.get("whisper_params", {})
    raw_sampling = raw_whisper.get("whisper_sampling_params", {}) if isinstance(raw_whisper, dict) else {}
    return _apply_asr_options(metadata, raw_sampling)


# --------------------------------------------------------------------------- control


class Control(enum.Enum):
    FINALIZE = "finalize"
    TERMINATE = "terminate"


def parse_control(text: str) -> Control:
    """A text frame after the metadata; raise ProtocolError(unknown_control) for anything else."""
    stripped = text.strip()
    if stripped == "finalize":
        return Control.FINALIZE
    try:
        value = json.loads(stripped)
    except (json.JSONDecodeError, RecursionError):
        value = None
    if value == "finalize" or value == {"type": "finalize"}:
        return Control.FINALIZE
    if value == {"type": "terminate"} or value == {"terminate_session": True}:
        return Control.TERMINATE
    shown = stripped if len(stripped) <= 80 else stripped[:77] + "..."
    raise ProtocolError(
        ErrorCode.UNKNOWN_CONTROL,
        f"unknown control message {shown!r}; expected \"finalize\", {{\"type\": \"finalize\"}}, "
        '{"terminate_session": true} or {"type": "terminate"} (metadata is sent only once)',
    )


# --------------------------------------------------------------------------- server messages


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)


class WordTimestamp(_Message):
    word: str
    start_time: float
    end_time: float
    prob: float


class Segment(_Message):
    text: str
    log_prob: float
    start_time: float
    end_time: float
    # Present only when word timestamps were asked for (PROTOCOL.md §4.1).
    word_timestamps: list[WordTimestamp] | None = Field(default=None, exclude_if=lambda v: v is None)


class Transcription(_Message):
    type: Literal["transcription"] = "transcription"
    transcription_num: int
    is_final: bool
    transcript: str
    confidence: float | None
    language_code: str | None
    language_prob: float | None
    segments: list[Segment]


class ErrorDetail(_Message):
    code: ErrorCode
    message: str
    field: str | None = None


class ErrorMessage(_Message):
    type: Literal["error"] = "error"
    error: ErrorDetail

    @classmethod
    def from_error(cls, error: ProtocolError) -> ErrorMessage:
        return cls(error=ErrorDetail(code=error.code, message=error.message, field=error.field))


ServerMessage = Transcription | ErrorMessage


@dataclass(frozen=True)
class SessionLimits:
    """Server-side limits; PROTOCOL.md §4.3 gives the defaults."""

    metadata_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    max_frame_bytes: int = 1024 * 1024
    # A real-time stream whose audio waits longer than this for its final is closed (server_behind).
    max_lag_s: float | None = 10.0
