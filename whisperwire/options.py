"""What a session's metadata asks of the model: the checks against what the model can do, and
the decoding options every recognition of the session uses."""

from __future__ import annotations

from collections.abc import Callable

from .protocol import MAX_PROMPT_TOKENS, ErrorCode, Metadata, ProtocolError
from .values import DecodeOptions, ModelInfo


def check_model_support(metadata: Metadata, model: ModelInfo, count_tokens: Callable[[str], int]) -> None:
    """What the metadata asks of the model that it cannot do: an invalid_metadata error."""
    whisper = metadata.whisper_params
    language = whisper.audio_language
    if language != "auto" and language not in model.languages:
        english_only = "" if model.multilingual else " (it is English-only: use en or auto)"
        error = f"model {model.name} does not support audio_language {language!r}{english_only}"
        raise ProtocolError(ErrorCode.INVALID_METADATA, error, "whisper_params.audio_language")
    unsupported = [c for c in whisper.language_options if c not in model.languages]
    if unsupported:
        error = f"model {model.name} does not support language {unsupported[0]!r}"
        raise ProtocolError(ErrorCode.INVALID_METADATA, error, "whisper_params.language_options")
    if whisper.prompt is not None and (tokens := count_tokens(whisper.prompt)) > MAX_PROMPT_TOKENS:
        error = f"whisper_params.prompt is {tokens} tokens; at most {MAX_PROMPT_TOKENS}"
        raise ProtocolError(ErrorCode.INVALID_METADATA, error, "whisper_params.prompt")


def decode_options(metadata: Metadata) -> DecodeOptions:
    whisper, sampling = metadata.whisper_params, metadata.sampling
    return DecodeOptions(
        language=None if whisper.audio_language == "auto" else whisper.audio_language,
        language_options=tuple(whisper.language_options),
        prompt=whisper.prompt,
        beam_width=sampling.beam_width,
        length_penalty=sampling.length_penalty,
        repetition_penalty=sampling.repetition_penalty,
        no_repeat_ngram_size=sampling.no_repeat_ngram_size,
        word_timestamps=whisper.show_word_timestamps,
        dynamic_preprocessing=whisper.use_dynamic_preprocessing,
    )
