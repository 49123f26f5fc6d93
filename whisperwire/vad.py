"""Streaming Silero voice activity detection: one speech probability per 32 ms window.

The model is the Silero VAD v6 ONNX file that faster-whisper ships. It is an LSTM: each window
is scored given the recurrent state (h, c) left by the previous one and, prepended to its 512
samples, the last 64 samples of the previous window. `SileroVAD` holds the one inference session
the server shares; each client session gets a `VADStream` with its own state.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime
from faster_whisper.utils import get_assets_path

from .values import WINDOW_SAMPLES

__all__ = ["WINDOW_SAMPLES", "SileroVAD", "VADStream", "default_model_path"]

CONTEXT_SAMPLES = 64
MODEL_FILE = "silero_vad_v6.onnx"

_STATE_SHAPE = (1, 1, 128)
# Windows per run. The model's seq_len axis is sequential: one run over N windows gives exactly
# what N single-window runs give, and costs less: on a 2-core x86 host, about 60 µs a window in
# runs of 16 or more, 130-150 µs one at a time. The cap only bounds the memory of a long call.
_MAX_BATCH = 1024


def default_model_path() -> str:
    return os.path.join(get_assets_path(), MODEL_FILE)


class SileroVAD:
    """The loaded model, shared by every stream of the server."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        options = onnxruntime.SessionOptions()
        # One thread each: a window is ~0.1 ms of work, too little to split, and the server runs
        # many sessions (and Whisper) on the same cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only; the model's initializer warnings are noise
        self._session = onnxruntime.InferenceSession(
            os.fspath(path if path is not None else default_model_path()),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )

    def new_stream(self) -> VADStream:
        return VADStream(self)

    def _run(
        self, windows: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # InferenceSession.run is safe to call from several threads at once.
        probs, h, c = self._session.run(None, {"input": windows, "h": h, "c": c})
        return probs, h, c


class VADStream:
    """The VAD state of one audio stream; feed it 16 kHz audio in whole windows."""

    def __init__(self, vad: SileroVAD) -> None:
        self._vad = vad
        self.reset()

    def reset(self) -> None:
        """Forget the audio so far, as if the stream started now."""
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability (float32, 0..1) of each 512-sample window of `audio`.

        `audio` is float32 mono at 16 kHz and continues the audio of the previous call; its
        length must be a multiple of WINDOW_SAMPLES.
        """
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1 or len(samples) % WINDOW_SAMPLES:
            raise ValueError(
                f"audio must be 1-D with a multiple of {WINDOW_SAMPLES} samples, "
                f"got shape {samples.shape}"
            )
        windows = samples.reshape(-1, WINDOW_SAMPLES)
        results = [
            self._score(windows[start : start + _MAX_BATCH])
            for start in range(0, len(windows), _MAX_BATCH)
        ]
        return np.concatenate(results) if results else np.zeros(0, dtype=np.float32)

    def _score(self, windows: np.ndarray) -> np.ndarray:
        # Each window's context is the tail of the window before it; the first one's comes
        # from the previous call.
        contexts = np.concatenate([self._context[None, :], windows[:-1, -CONTEXT_SAMPLES:]])
        model_input = np.concatenate([contexts, windows], axis=1)
        probs, self._h, self._c = self._vad._run(model_input, self._h, self._c)
        self._context = windows[-1, -CONTEXT_SAMPLES:].copy()
        return np.asarray(probs, dtype=np.float32).reshape(-1)
