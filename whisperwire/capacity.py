"""How many live streams the inference workers hold, from what recognition has cost lately.

Admission control (server.py) asks this before taking a stream, so that streams started at the
same instant are not all admitted onto a machine that holds fewer: the queue shows overload only
seconds after it began. The measure is the workers' time spent on finals per second of audio
received, over the last ``WINDOW_S``. Partials and drafts are left out: under load partials
stretch and drafts give way, so they are not load a stream needs. Until enough audio has been
measured, a prior stands in (``ServerConfig.stream_cost_prior``: `whisperwire serve` times one
recognition at start-up); with neither, only the other admission rules apply.

No clock is read here but the one given; the scheduler's, which tests move by hand.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .values import SAMPLE_RATE, DecodeOptions, Engine

WINDOW_S = 30.0  # the cost is measured over about this long
BUCKET_S = 5.0  # in buckets this long: the oldest leaves whole
MIN_AUDIO_S = 20.0  # audio measured before the measurement replaces the prior
# The workers' share of time that admitted streams may fill; the rest absorbs speech that comes
# in bursts (several streams' finals due at once).
TARGET_BUSY = 0.8
# The prior, as worker seconds per audio second for each second that one probe recognition (a
# second of silence with word times, `probe_recognition_s`) takes at start-up. Measured
# on the shared English clips through the session core: 0.21 finals with words per second of
# audio, each taking 1.4 probes (BENCHMARKS.md, Capacity).
COST_PER_PROBE_S = 0.3


def probe_recognition_s(engine: Engine, tries: int = 3) -> float:
    """Seconds one recognition takes here: a second of silence with word times (the encoder's
    full window and the alignment a final pays), timed once the engine is warm. The fastest of
    a few: another process's burst should not set the server's capacity for good."""
    silence, options = np.zeros(SAMPLE_RATE, dtype=np.float32), DecodeOptions(language="en", word_timestamps=True)
    times = []
    for _ in range(tries):
        began = time.perf_counter()
        engine.transcribe(silence, options)
        times.append(time.perf_counter() - began)
    return min(times)


def prior_cost(probe_s: float) -> float:
    """The cost assumed until measured, from the start-up probe's time."""
    return COST_PER_PROBE_S * probe_s


@dataclass
class _Bucket:
    start: float
    busy_s: float = 0.0
    audio_s: float = 0.0


class Capacity:
    def __init__(self, workers: int, prior_cost: float | None, clock: Callable[[], float]) -> None:
        self.workers = workers
        self.prior_cost = prior_cost
        self._clock = clock
        self._buckets: deque[_Bucket] = deque()
        self._lock = threading.Lock()  # recognised() runs on the worker threads

    def recognised(self, seconds: float) -> None:
        """A final took the workers ``seconds``."""
        with self._lock:
            self._bucket().busy_s += seconds

    def received(self, seconds: float) -> None:
        """``seconds`` of audio arrived, on any stream."""
        with self._lock:
            self._bucket().audio_s += seconds

    def cost(self) -> float | None:
        """Worker seconds per second of audio: measured, else the prior, else None."""
        with self._lock:
            self._expire(self._clock())
            audio = sum(b.audio_s for b in self._buckets)
            busy = sum(b.busy_s for b in self._buckets)
        # Audio without a final (silence) says nothing of what speech costs.
        if audio >= MIN_AUDIO_S and busy > 0:
            return busy / audio
        return self.prior_cost

    def streams(self) -> int | None:
        """How many real-time streams the workers hold; None when nothing says yet."""
        cost = self.cost()
        if cost is None or cost <= 0:
            return None
        return max(1, math.floor(self.workers * TARGET_BUSY / cost))

    def _bucket(self) -> _Bucket:
        now = self._clock()
        self._expire(now)
        if not self._buckets or now - self._buckets[-1].start >= BUCKET_S:
            self._buckets.append(_Bucket(now))
        return self._buckets[-1]

    def _expire(self, now: float) -> None:
        while self._buckets and now - self._buckets[0].start > WINDOW_S:
            self._buckets.popleft()
