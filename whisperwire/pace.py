"""When a stream's frames arrive, against the audio they carry: the wall-clock facts the session
needs (audio sent faster than real time, audio that has stopped arriving), from the times the
session is told. No clock is read here.
"""

from __future__ import annotations

from dataclasses import dataclass

# A stream is sent faster than real time when more audio has arrived than this many times the
# time since its first frame, plus this slack (a real-time client sends a little ahead).
FASTER_THAN_REAL_TIME = 1.5
REAL_TIME_SLACK_S = 1.0


@dataclass
class Pace:
    last_frame_at: float  # any frame, text or audio
    first_audio_at: float | None = None
    audio_end_at: float = 0.0  # when the last audio frame's audio ends, played from its arrival

    def frame(self, now: float) -> None:
        self.last_frame_at = now

    def audio(self, now: float, seconds: float) -> None:
        self.last_frame_at = now
        if self.first_audio_at is None:
            self.first_audio_at = now
        self.audio_end_at = now + seconds

    def faster_than_real_time(self, received_s: float) -> bool:
        """Whether ``received_s`` of audio came faster than it plays (a file sent at full speed)."""
        assert self.first_audio_at is not None, "no audio yet"
        return received_s > FASTER_THAN_REAL_TIME * (self.last_frame_at - self.first_audio_at) + REAL_TIME_SLACK_S

    def stalled_at(self, silence_s: float) -> float:
        """When the audio has stopped arriving for ``silence_s``: that long after the last
        frame's audio would have ended, played in real time from its arrival (a client sending
        1 s chunks is not stalled between them)."""
        return max(self.audio_end_at, self.last_frame_at) + silence_s
