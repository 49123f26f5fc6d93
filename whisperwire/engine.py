"""The Whisper interface the scheduler calls, and its CTranslate2 (faster-whisper) implementation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.transcribe import Segment as FwSegment
from faster_whisper.transcribe import Word as FwWord
from tokenizers import Tokenizer

from whisperwire import guards
from whisperwire.models import ModelError, resolve_model
from whisperwire.whisper_model import (  # noqa: F401 - re-exported: the encoder windows are the engine's
    ENCODER_WINDOWS_S,
    PARTIAL_WINDOWS_S,
    PROMPT_TOKEN_LIMIT,
    FittedWindowModel,
    FullPromptModel,
    encoder_window_frames,
)
from whisperwire.values import SAMPLE_RATE, DecodeOptions, Engine, ModelInfo, Result, SegmentResult, Word

if TYPE_CHECKING:
    from whisperwire.settings import Settings

__all__ = ["DecodeOptions", "Engine", "ModelInfo", "Result", "SegmentResult", "WhisperEngine", "Word", "load_engine"]


class WhisperEngine:
    """A Whisper model run by CTranslate2 through faster-whisper.

    Thread-safety: CTranslate2 queues calls to its ``replicas`` model replicas (``num_workers``),
    so overlapping calls are safe and up to ``replicas`` run in parallel; the server calls
    ``transcribe`` and ``detect_language`` from as many worker threads as there are replicas. Nothing here keeps
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
        fit_window: bool = False,
        replicas: int = 1,
    ) -> None:
        self.device = _resolve_device(device)
        self.compute_type = _resolve_compute_type(compute_type, self.device)
        model_class = FittedWindowModel if fit_window else FullPromptModel
        try:
            self._model = model_class(
                str(model_dir),
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=cpu_threads,
                num_workers=replicas,
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
        return len(self._encode(text))

    def _prompt_tokens(self, options: DecodeOptions) -> list[int] | None:
        """The user's prompt followed by as much of the context as fits, as token ids.

        faster-whisper keeps only the last PROMPT_TOKEN_LIMIT tokens of a prompt, so a context
        that does not fit would push the user's prompt out; the context's oldest words go
        instead, whole words at a time.
        """
        prompt = self._encode(options.prompt)
        context = self._encode(options.context)
        room = PROMPT_TOKEN_LIMIT - len(prompt)
        if len(context) > room:
            context = context[len(context) - max(room, 0) :]
            while context and not self._starts_word(context[0]):
                context = context[1:]
        tokens = prompt + context
        return tokens or None

    def _encode(self, text: str | None) -> list[int]:
        return prompt_token_ids(self._model.hf_tokenizer, text)

    def _starts_word(self, token: int) -> bool:
        # Byte-level BPE marks a token that begins with a space with "Ġ".
        return (self._model.hf_tokenizer.id_to_token(token) or "").startswith("Ġ")

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

    def encode_ahead(self, calls: list[tuple[np.ndarray, DecodeOptions]]) -> None:
        """Encode the first encoder window of each call's audio in one batch; this thread's
        next ``transcribe`` of each of them (same audio, same options) uses it. On a GPU several
        windows cost about what one does; on the CPU measured in BENCHMARKS.md they cost as
        much together as apart. Calls with ``fit_window`` are left to encode alone."""
        self._model.encode_ahead([self._prepared(audio, options) for audio, options in calls if not options.fit_window])

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result:
        self._model.fitting(PARTIAL_WINDOWS_S if options.fit_window else None)
        try:
            return self._transcribe(audio, options)
        finally:
            self._model.fitting(None)

    def _transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result:
        """Decode the whole utterance in one go and return its kept segments.

        Decoding is greedy or beam search at temperature 0 only: the output is deterministic
        (partials of a growing utterance do not flicker between samples) and there is no
        fallback through five more temperatures, which on a hard utterance multiplies the cost
        by up to six exactly when the server is least able to afford it.
        """
        audio = self._prepared(audio, options)
        duration = len(audio) / SAMPLE_RATE
        self._model.encode_seconds()  # from 0: language detection's encoding counts too
        self._model.batched()
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
            log_prob_threshold=None,  # the drop rules are applied below (guards.is_speech)
            no_speech_threshold=None,
            condition_on_previous_text=False,
            initial_prompt=self._prompt_tokens(options),
            prefix=options.prefix,
            word_timestamps=options.word_timestamps,
            vad_filter=False,  # the server's streaming VAD already cut the utterance
        )
        kept = tuple(
            self._segment_result(segment, duration, options.word_timestamps)
            for segment in segments  # a generator: iterating it is what runs the decoder
            if guards.is_speech(
                segment.text,
                no_speech_prob=segment.no_speech_prob,
                avg_logprob=segment.avg_logprob,
                compression_ratio=segment.compression_ratio,
            )
        )
        return Result(
            segments=kept, language=language, language_prob=language_prob,
            encode_s=self._model.encode_seconds(), batched=self._model.batched(),
        )

    @staticmethod
    def _prepared(audio: np.ndarray, options: DecodeOptions) -> np.ndarray:
        audio = _as_mono_float32(audio)
        if options.dynamic_preprocessing:
            # Imported here: the audio module is optional for engines that never preprocess.
            from whisperwire.audio import compress_dynamic_range

            audio = np.asarray(compress_dynamic_range(audio, SAMPLE_RATE), dtype=np.float32)
        return audio

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
    fit_window: bool = False,
    replicas: int = 1,
) -> WhisperEngine:
    """Find (or assemble) the model named by ``spec`` and load it; see models.resolve_model."""
    model_dir = resolve_model(spec, cache_dir)
    return WhisperEngine(
        model_dir,
        name=spec,
        device=device,
        compute_type=compute_type,
        cpu_threads=cpu_threads,
        fit_window=fit_window,
        replicas=replicas,
    )


def load_warm_engine(settings: Settings, cpu_threads: int | None = None, replicas: int = 1) -> WhisperEngine:
    """The model ``settings`` name, loaded and run once on each replica: the first inference
    pays for lazy initialisation, and the first client should not."""
    from concurrent.futures import ThreadPoolExecutor

    from whisperwire.settings import usable_cores

    engine = load_engine(
        settings.model,
        device=settings.device,
        compute_type=settings.compute_type,
        cpu_threads=cpu_threads or settings.cpu_threads or usable_cores(),
        cache_dir=settings.cache_dir,
        fit_window=settings.encoder_window == "fit",
        replicas=replicas,
    )
    # Each replica (calls at once go to free ones) in each window a partial may get, word times on:
    # CTranslate2 keeps buffers per shape, so memory is at its working size before any client.
    options = DecodeOptions(language="en", word_timestamps=True, fit_window=True)
    with ThreadPoolExecutor(replicas) as pool:
        for audio in (np.zeros((seconds - 1) * SAMPLE_RATE, np.float32) for seconds in PARTIAL_WINDOWS_S):
            list(pool.map(lambda _: engine.transcribe(audio, options), range(replicas)))  # noqa: B023
    return engine


def count_prompt_tokens(tokenizer: Tokenizer, text: str) -> int:
    """The tokens ``text`` takes as a Whisper prompt.

    A function of the tokenizer alone, so a process without the model (a Ray ingress) counts
    exactly what the model's process would.
    """
    return len(prompt_token_ids(tokenizer, text))


def prompt_token_ids(tokenizer: Tokenizer, text: str | None) -> list[int]:
    # faster-whisper sends a text prompt as " " + prompt.strip(); encode exactly that.
    prompt = _clean_prompt(text)
    if prompt is None:
        return []
    return list(tokenizer.encode(" " + prompt, add_special_tokens=False).ids)


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
