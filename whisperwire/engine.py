"""The Whisper interface the scheduler calls, and its CTranslate2 (faster-whisper) implementation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.transcribe import Segment as FwSegment
from faster_whisper.transcribe import Word as FwWord
from tokenizers import Tokenizer

from whisperwire.models import ModelError, resolve_model


@dataclass(frozen=True)
class ModelInfo:
    name: str
    multilingual: bool
    languages: frozenset[str]


@dataclass(frozen=True)
class DecodeOptions:
    language: str | None  # None: detect per call, among language_options (empty: all)
    language_options: tuple[str, ...] = ()
    prompt: str | None = None
    beam_width: int = 1
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    word_timestamps: bool = False
    dynamic_preprocessing: bool = False


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio given to transcribe()
    end: float
    prob: float


@dataclass(frozen=True)
class SegmentResult:
    text: str
    start: float  # seconds from the start of the audio given to transcribe()
    end: float
    avg_logprob: float
    n_tokens: int
    no_speech_prob: float
    compression_ratio: float
    words: tuple[Word, ...] | None  # None unless word timestamps were asked for


@dataclass(frozen=True)
class Result:
    segments: tuple[SegmentResult, ...]
    language: str
    language_prob: float | None  # None when the language was given, not detected

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()

    @property
    def mean_logprob(self) -> float | None:
        tokens = sum(s.n_tokens for s in self.segments)
        if tokens == 0:
            return None
        return sum(s.avg_logprob * s.n_tokens for s in self.segments) / tokens


class Engine(Protocol):
    info: ModelInfo

    def count_tokens(self, text: str) -> int: ...

    def detect_language(
        self, audio: np.ndarray, language_options: tuple[str, ...] = ()
    ) -> tuple[str, float]: ...

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result: ...


# --------------------------------------------------------------------------- faster-whisper

SAMPLE_RATE = 16_000
# A window whose no-speech probability is above 0.6 while its mean log-probability is under
# LOG_PROB_THRESHOLD is skipped inside faster-whisper. Its default threshold is -1; ours is
# stricter because the streaming VAD hands over short bursts of noise that Whisper decodes as
# "Thank you." at about -0.8 with no-speech probability 0.7-0.8, while no real utterance of the
# shared clips goes above 0.4 (tests/test_server.py). A segment that gzip-compresses better
# than 2.4:1 is a repetition loop ("you you you ..."), which with a single temperature nothing
# else catches, so it is dropped here.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -0.5
COMPRESSION_RATIO_LIMIT = 2.4


class WhisperEngine:
    """A Whisper model run by CTranslate2 through faster-whisper.

    Thread-safety: CTranslate2 serialises calls into its single replica (``num_workers=1``)
    through its own job queue, so overlapping calls are safe but never parallel; the server
    calls ``transcribe`` and ``detect_language`` from one worker thread anyway. Nothing here keeps
    state between calls. ``count_tokens`` only reads the Rust tokenizer, which may be used from
    any thread (the event loop validates prompts with it while the worker decodes).
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        name: str,
        device: str = "cpu",
        compute_type: str = "default",
        cpu_threads: int = 0,
    ) -> None:
        self.device = _resolve_device(device)
        self.compute_type = _resolve_compute_type(compute_type, self.device)
        try:
            self._model = WhisperModel(
                str(model_dir),
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=cpu_threads,
                num_workers=1,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(
                f"cannot load model {name!r} from {model_dir} on {self.device} "
                f"({self.compute_type}): {exc}"
            ) from exc
        tokenizer = self._model.hf_tokenizer
        self._eot = tokenizer.token_to_id("<|endoftext|>")
        multilingual = bool(self._model.model.is_multilingual)
        languages = _model_languages(Path(model_dir), self._model) if multilingual else {"en"}
        self.info = ModelInfo(name=name, multilingual=multilingual, languages=frozenset(languages))

    @property
    def tokenizer(self) -> Tokenizer:
        return self._model.hf_tokenizer

    def count_tokens(self, text: str) -> int:
        return count_prompt_tokens(self._model.hf_tokenizer, text)

    def detect_language(
        self, audio: np.ndarray, language_options: tuple[str, ...] = ()
    ) -> tuple[str, float]:
        """The most likely language of the first 30 s of ``audio`` and its probability.

        With ``language_options`` the choice is among those only, and the probability is
        renormalised over them, so it reads "how sure among the allowed languages" rather than a
        small share of a distribution over 99 languages the client excluded.
        """
        if not self.info.multilingual:
            return "en", 1.0
        allowed = self._check_languages(language_options, "language_options")
        _, _, all_probs = self._model.detect_language(
            audio=_as_mono_float32(audio), language_detection_segments=1
        )
        probs = [(code, p) for code, p in all_probs if not allowed or code in allowed]
        if not probs:  # unreachable when the options are model languages; be explicit anyway
            raise ValueError(f"no probability for any of {sorted(allowed)}")
        code, best = max(probs, key=lambda item: item[1])
        total = sum(p for _, p in probs)
        # Softmax outputs can underflow to 0 for languages far off; then no option is preferred.
        return code, (best / total if total > 0 else 1.0 / len(probs))

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result:
        """Decode the whole utterance in one go and return its kept segments.

        Decoding is greedy or beam search at temperature 0 only: the output is deterministic
        (partials of a growing utterance do not flicker between samples) and there is no
        fallback through five more temperatures, which on a hard utterance multiplies the cost
        by up to six exactly when the server is least able to afford it.
        """
        audio = _as_mono_float32(audio)
        duration = len(audio) / SAMPLE_RATE
        if options.dynamic_preprocessing:
            # Imported here: the audio module is optional for engines that never preprocess.
            from whisperwire.audio import compress_dynamic_range

            audio = np.asarray(compress_dynamic_range(audio, SAMPLE_RATE), dtype=np.float32)
        language, language_prob = self._choose_language(audio, options)
        segments, _ = self._model.transcribe(
            audio,
            language=language,
            task="transcribe",
            beam_size=options.beam_width,
            best_of=1,
            length_penalty=options.length_penalty,
            repetition_penalty=options.repetition_penalty,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            temperature=0.0,
            compression_ratio_threshold=None,  # only steers fallback, which is off
            log_prob_threshold=LOG_PROB_THRESHOLD,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            condition_on_previous_text=False,
            initial_prompt=_clean_prompt(options.prompt),
            word_timestamps=options.word_timestamps,
            vad_filter=False,  # the server's streaming VAD already cut the utterance
        )
        kept = tuple(
            self._segment_result(segment, duration, options.word_timestamps)
            for segment in segments  # a generator: iterating it is what runs the decoder
            if segment.compression_ratio <= COMPRESSION_RATIO_LIMIT
        )
        return Result(segments=kept, language=language, language_prob=language_prob)

    def _choose_language(
        self, audio: np.ndarray, options: DecodeOptions
    ) -> tuple[str, float | None]:
        if options.language is not None:
            self._check_languages((options.language,), "language")
            return options.language, None
        return self.detect_language(audio, options.language_options)

    def _check_languages(self, codes: tuple[str, ...], what: str) -> frozenset[str]:
        unknown = sorted(set(codes) - self.info.languages)
        if unknown:
            raise ValueError(f"{what}: model {self.info.name} does not know {', '.join(unknown)}")
        return frozenset(codes)

    def _segment_result(
        self, segment: FwSegment, duration: float, with_words: bool
    ) -> SegmentResult:
        # Whisper's timestamp tokens live in a 30 s window, so on a short clip they can point
        # past the end of the audio; and DTW word times can stray outside the segment's own
        # (coarser) timestamp tokens. Widen the segment to its words, then hold all in the audio.
        words = list(segment.words or ()) if with_words else []
        start, end = float(segment.start), float(segment.end)
        if words:
            start, end = min(start, float(words[0].start)), max(end, float(words[-1].end))
        start = _clamp(start, 0.0, duration)
        end = _clamp(end, start, duration)
        return SegmentResult(
            text=segment.text,
            start=start,
            end=end,
            avg_logprob=float(segment.avg_logprob),
            # faster-whisper's segment tokens include the timestamp tokens around the text.
            n_tokens=sum(1 for token in segment.tokens if token < self._eot),
            no_speech_prob=float(segment.no_speech_prob),
            compression_ratio=float(segment.compression_ratio),
            words=tuple(_word(w, start, end) for w in words) if with_words else None,
        )


def load_engine(
    spec: str,
    *,
    device: str = "cpu",
    compute_type: str = "default",
    cpu_threads: int = 0,
    cache_dir: Path | None = None,
) -> WhisperEngine:
    """Find (or assemble) the model named by ``spec`` and load it; see models.resolve_model."""
    model_dir = resolve_model(spec, cache_dir)
    return WhisperEngine(
        model_dir, name=spec, device=device, compute_type=compute_type, cpu_threads=cpu_threads
    )


def count_prompt_tokens(tokenizer: Tokenizer, text: str) -> int:
    """The tokens ``text`` takes as a Whisper prompt.

    A function of the tokenizer alone, so a process without the model (a Ray ingress) counts
    exactly what the model's process would.
    """
    # faster-whisper sends the prompt as " " + prompt.strip(); count exactly that.
    prompt = _clean_prompt(text)
    if prompt is None:
        return 0
    return len(tokenizer.encode(" " + prompt, add_special_tokens=False).ids)


def _resolve_device(device: str) -> str:
    if device == "auto":
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, not {device!r}")
    return device


def _resolve_compute_type(compute_type: str, device: str) -> str:
    # CTranslate2's own "default" keeps the stored type (float16 for both bundled models), which
    # a CPU runs as float32 after a warning. int8 is faster on CPU (about 15 % on base with two
    # cores), needs a quarter of float32's memory, and gave the same words on the test clips.
    if compute_type != "default":
        return compute_type
    return "float16" if device == "cuda" else "int8"


def _model_languages(model_dir: Path, model: WhisperModel) -> frozenset[str]:
    # faster-whisper reports all 100 codes for any multilingual model, but only large-v3 knows
    # "yue"; the model's own config lists the language tokens it really has.
    try:
        lang_ids = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["lang_ids"]
    except (OSError, ValueError, KeyError):
        return frozenset(model.supported_languages)
    tokens = (model.hf_tokenizer.id_to_token(i) for i in lang_ids)
    return frozenset(t[2:-2] for t in tokens if t and t.startswith("<|") and t.endswith("|>"))


def _as_mono_float32(audio: np.ndarray) -> np.ndarray:
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be one channel (a 1-D array), got shape {audio.shape}")
    return audio


def _clean_prompt(prompt: str | None) -> str | None:
    # A blank prompt would still reach the model as a lone space token.
    if prompt is None or not prompt.strip():
        return None
    return prompt.strip()


def _clamp(value: float, low: float, high: float) -> float:
    # Milliseconds are finer than Whisper's 20 ms steps and hide float noise like 1.0999999;
    # rounding goes first so that it cannot push a time past the bounds.
    return min(max(round(value, 3), low), high)


def _word(word: FwWord, seg_start: float, seg_end: float) -> Word:
    start = _clamp(float(word.start), seg_start, seg_end)
    return Word(
        word=word.word,
        start=start,
        end=_clamp(float(word.end), start, seg_end),
        prob=float(word.probability),
    )
