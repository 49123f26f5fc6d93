"""How the server behaves: limits, buffers, admission, drafts. `ServerConfig` is the one source of
these defaults; `whisperwire serve`'s settings (settings.py) take theirs from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from .protocol import SessionLimits


@dataclass(frozen=True)
class ServerConfig:
    api_keys: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    limits: SessionLimits = field(default_factory=SessionLimits)
    send_buffer_bytes: int = 1024 * 1024
    drain_timeout_s: float = 30.0
    # Admission control: a new stream is refused (server_busy, 1013) at max_sessions open
    # sessions (None: no limit), or while a final has waited longer than max_queue_wait_s for
    # an inference worker, which means the streams already admitted are falling behind.
    max_sessions: int | None = 64
    max_queue_wait_s: float | None = 3.0
    # And at as many streams as the inference workers hold (capacity.py): measured from the
    # recent cost of finals per second of audio, or this prior (worker seconds per second of a
    # stream's audio) until then; None: no prior, the measurement alone.
    stream_cost_prior: float | None = None
    draft_finals: bool = True  # start finals during the silence window (session.py, drafts)
    vad_batch: int = 3  # VAD windows per run: under half the CPU per window, seen up to 64 ms later
    context_prompt: bool = False  # prompt each utterance with the previous one's text
    # Recognitions at once: one per model replica of an engine in this process (`serve --workers`),
    # more for a remote one.
    inference_workers: int = 1
    inference_batch: int = 1  # finals a worker takes at once when several wait (scheduler.py)
