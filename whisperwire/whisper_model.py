"""Our faster-whisper ``WhisperModel``: the whole prompt the protocol accepts, an encoder window
fitted to the audio, the encoder timed per thread, and windows encoded ahead in one batch.

What it changes is what faster-whisper hands to CTranslate2; decoding, timestamps and word
alignment are faster-whisper's own. ``engine.WhisperEngine`` is the only user.
"""

from __future__ import annotations

import threading
import time

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer as FwTokenizer
from faster_whisper.transcribe import get_ctranslate2_storage

from whisperwire.protocol import MAX_PROMPT_TOKENS

# The prompt the protocol accepts (PROTOCOL.md: at most 224 tokens) reaches Whisper whole.
# faster-whisper itself keeps only the last max_length // 2 - 1 = 223 tokens of a prompt (half
# of Whisper's 448-token text context, less <|startofprev|>); FullPromptModel keeps 224.
PROMPT_TOKEN_LIMIT = MAX_PROMPT_TOKENS


# --------------------------------------------------------------------------- encoder window

FRAMES_PER_SECOND = 100  # Whisper's log-mel hop is 10 ms
# The encoder windows an utterance may be given, in seconds. Whisper is trained on 30 s windows
# and pads everything to 30 s; CTranslate2 accepts shorter inputs, and encoder cost grows faster
# than linearly with length (attention). Streaming the shared clips (BENCHMARKS.md), a 20 s
# floor halves the server's CPU for 0.28 points of WER (7.06 % against 6.78 % with 30 s);
# a 15 s floor costs 1.1 points, and shorter windows make the model misplace its timestamps
# and repeat itself. A few fixed sizes rather than any length keep batch shapes few on a GPU.
ENCODER_WINDOWS_S = (20, 25, 30)
# A partial's encoder windows (`DecodeOptions.fit_window`): its final replaces it within seconds;
# 10 s at the least, since shorter ones make tiny.en repeat the sentence. BENCHMARKS.md, Partials.
PARTIAL_WINDOWS_S = (10, 15, 20, 25, 30)


def encoder_window_frames(content_frames: int, windows_s: tuple[int, ...] = ENCODER_WINDOWS_S) -> int:
    """The smallest window (in mel frames) that holds ``content_frames``; the largest at most."""
    for seconds in windows_s:
        if content_frames <= seconds * FRAMES_PER_SECOND:
            return seconds * FRAMES_PER_SECOND
    return windows_s[-1] * FRAMES_PER_SECOND


class FullPromptModel(WhisperModel):
    """faster-whisper's WhisperModel that gives Whisper the whole prompt the protocol accepts,
    times its encoder (per thread: the metrics split a recognition into encode and decode), fits
    the encoder's window to the audio for the calls that ask (``fitting``, per thread), and
    encodes the first windows of several audios in one call (``encode_ahead``, per thread)."""

    _encoding = threading.local()
    windows_s: tuple[int, ...] | None = None  # every call's windows (FittedWindowModel); None: 30 s

    def encode(self, features: np.ndarray) -> ctranslate2.StorageView:
        ahead = self._take_ahead(features)
        if ahead is not None:
            return ahead
        began = time.perf_counter()
        try:
            return super().encode(self._window(features))
        finally:
            self._encoding.seconds = getattr(self._encoding, "seconds", 0.0) + time.perf_counter() - began

    def _window(self, features: np.ndarray) -> np.ndarray:
        windows = getattr(self._encoding, "windows", None) or self.windows_s
        if windows is None:
            return features
        return features[..., : encoder_window_frames(_content_frames(features), windows)]

    def encode_ahead(self, audios: list[np.ndarray]) -> None:
        """Encode the first window of each of ``audios`` together, one CTranslate2 call for each
        window size among them. This thread's next transcriptions of these very audios take
        their first window's encoding from here (``encode`` knows it by its features) instead of
        encoding it alone. What an earlier call left unused is forgotten."""
        firsts = [(first, self._window(first)) for first in map(self._first_window, audios)]
        ahead: list[tuple[np.ndarray, np.ndarray]] = []
        began = time.perf_counter()
        for shape in dict.fromkeys(window.shape for _, window in firsts):
            group = [(first, window) for first, window in firsts if window.shape == shape]
            batch = np.stack([window for _, window in group])
            # On the host, so that each utterance's part can be handed over alone (a StorageView
            # cannot be sliced); on a GPU that is one copy each way of the encoder's output.
            encoded = np.asarray(self.model.encode(get_ctranslate2_storage(batch), to_cpu=True))
            ahead += [(first, np.ascontiguousarray(encoded[n : n + 1])) for n, (first, _) in enumerate(group)]
        self._encoding.ahead = ahead
        self._encoding.ahead_share = (time.perf_counter() - began) / max(len(firsts), 1)
        self._encoding.ahead_size = len(firsts)

    def _first_window(self, audio: np.ndarray) -> np.ndarray:
        # Exactly the features faster-whisper's transcribe() gives encode() for its first window.
        features = self.feature_extractor(audio)
        return pad_or_trim(features[:, : min(self.feature_extractor.nb_max_frames, features.shape[-1] - 1)])

    def _take_ahead(self, features: np.ndarray) -> ctranslate2.StorageView | None:
        ahead = getattr(self._encoding, "ahead", [])
        for n, (first, encoded) in enumerate(ahead):
            if first.shape == features.shape and np.array_equal(first, features):
                del ahead[n]
                self._encoding.held = encoded  # the StorageView below borrows its memory
                self._encoding.seconds = getattr(self._encoding, "seconds", 0.0) + self._encoding.ahead_share
                self._encoding.batched = self._encoding.ahead_size
                return ctranslate2.StorageView.from_array(encoded)
        return None

    def batched(self) -> int:
        """How many utterances this thread's last encoding since the previous call was batched
        with (itself included; 1: encoded alone), and start again from 1."""
        size, self._encoding.batched = getattr(self._encoding, "batched", 1), 1
        return size

    def fitting(self, windows_s: tuple[int, ...] | None) -> None:
        """This thread's next calls encode in the smallest of ``windows_s`` that holds the audio
        (None: as the model does otherwise)."""
        self._encoding.windows = windows_s

    def encode_seconds(self) -> float:
        """The encoder's time on this thread since the last call, and start again from 0."""
        seconds, self._encoding.seconds = getattr(self._encoding, "seconds", 0.0), 0.0
        return seconds

    def get_prompt(
        self,
        tokenizer: FwTokenizer,
        previous_tokens: list[int],
        without_timestamps: bool = False,
        prefix: str | None = None,
        hotwords: str | None = None,
    ) -> list[int]:
        # The rest of the prompt (start of transcript, language, task, prefix) as faster-whisper
        # builds it; only the previous text is ours. Hotwords are never passed here.
        rest = super().get_prompt(tokenizer, [], without_timestamps, prefix, hotwords)
        if not previous_tokens:
            return rest
        return [tokenizer.sot_prev, *previous_tokens[-PROMPT_TOKEN_LIMIT:], *rest]


class FittedWindowModel(FullPromptModel):
    """faster-whisper's WhisperModel whose encoder sees, in every call, a window that fits the audio.

    faster-whisper pads every mel segment to 3000 frames (30 s) with zeros before ``encode``;
    this cuts that padding back to ``encoder_window_frames`` (FullPromptModel.encode, which
    partials ask for per call). Decoding, timestamps and word alignment work on the shorter
    encoder output unchanged: alignment only reads the frames of the content (``num_frames``),
    which the window always holds.
    """

    windows_s = ENCODER_WINDOWS_S


def _content_frames(features: np.ndarray) -> int:
    # The padding is exact zeros; a real log-mel frame never is (every bin is log10 of a
    # clipped power, normalised: 0.0 in all 80 bins would be a power of exactly 1e-4).
    nonzero = np.flatnonzero(np.any(features.reshape(-1, features.shape[-1]) != 0, axis=0))
    return int(nonzero[-1]) + 1 if len(nonzero) else 1
