"""Non-speech audio for the hallucination tests and benchmark: generated signals and the parts
of the shared clips where nobody speaks.

Every generator is deterministic (seeded) and returns float32 mono at 16 kHz. The set covers
what a microphone hears between utterances and what makes streaming Whisper write text on
silence: steady noise, tones, music, clicks, and real room sound and laughter.
"""

from __future__ import annotations

from collections.abc import Callable
import numpy as np

RATE = 16_000

Generator = Callable[[float, np.random.Generator], np.ndarray]


def _time(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * RATE)) / RATE


def _db(dbfs: float) -> float:
    return float(10 ** (dbfs / 20))


def _normalise(signal: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = float(np.max(np.abs(signal))) or 1.0
    return (signal / peak * _db(peak_dbfs)).astype(np.float32)


def _coloured_noise(seconds: float, rng: np.random.Generator, exponent: float) -> np.ndarray:
    # Shape white noise's spectrum by f^-exponent/2 in power: 1 is pink, 2 is brown.
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    freqs[0] = freqs[1]
    return np.fft.irfft(spectrum / freqs ** (exponent / 2), n)


def _harmonic(freq: float, t: np.ndarray, partials: int = 6) -> np.ndarray:
    # A musical note: partials falling off as 1/k, like a plucked or bowed string.
    return sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, partials + 1))


def _envelope(n: int, attack_s: float, release_s: float) -> np.ndarray:
    env = np.ones(n)
    attack, release = min(n, int(attack_s * RATE)), min(n, int(release_s * RATE))
    env[:attack] = np.linspace(0, 1, attack)
    env[n - release :] *= np.exp(-np.linspace(0, 5, release))
    return env


def _notes(seconds: float, rng: np.random.Generator, voices: int, note_s: float) -> np.ndarray:
    # Notes of a pentatonic scale on a steady beat, `voices` at a time.
    scale = 220.0 * 2 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16]) / 12)
    out = np.zeros(int(seconds * RATE))
    step = int(note_s * RATE)
    for begin in range(0, len(out), step):
        n = min(step, len(out) - begin)
        t = np.arange(n) / RATE
        chord = sum(_harmonic(f, t) for f in rng.choice(scale, voices, replace=False))
        out[begin : begin + n] += chord * _envelope(n, 0.01, note_s * 0.8)
    return out


def digital_silence(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def dither(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(int(seconds * RATE)) * _db(-70)).astype(np.float32)


def white_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(int(seconds * RATE)) * _db(-26)).astype(np.float32)


def loud_white_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.standard_normal(int(seconds * RATE)) * _db(-14), -1, 1).astype(np.float32)


def pink_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return _normalise(_coloured_noise(seconds, rng, 1.0), -12)


def brown_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return _normalise(_coloured_noise(seconds, rng, 2.0), -12)


def noise_bursts(seconds: float, rng: np.random.Generator) -> np.ndarray:
    # Pink noise switched on and off every 0.3-1.5 s: a fan, a passing car, wind on the mic.
    noise = _coloured_noise(seconds, rng, 1.0)
    gate = np.zeros_like(noise)
    at, on = 0, False
    while at < len(gate):
        length = int(rng.uniform(0.3, 1.5) * RATE)
        if on:
            gate[at : at + length] = _envelope(len(gate[at : at + length]), 0.05, 0.1)
        at, on = at + length, not on
    return _normalise(noise * gate, -10)


def tone_440(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return (np.sin(2 * np.pi * 440 * _time(seconds)) * _db(-12)).astype(np.float32)


def beeps(seconds: float, rng: np.random.Generator) -> np.ndarray:
    # A 1 kHz beep, 0.2 s on, 0.8 s off: a phone's ring-back or a device's alert.
    t = _time(seconds)
    gate = (t % 1.0) < 0.2
    return (np.sin(2 * np.pi * 1000 * t) * gate * _db(-10)).astype(np.float32)


def dtmf(seconds: float, rng: np.random.Generator) -> np.ndarray:
    # Telephone keypad tones, 0.15 s each with 0.1 s gaps.
    low, high = [697, 770, 852, 941], [1209, 1336, 1477]
    t = _time(seconds)
    out = np.zeros_like(t)
    for begin in range(0, len(t), int(0.25 * RATE)):
        n = min(int(0.15 * RATE), len(t) - begin)
        tt = t[:n]
        out[begin : begin + n] = np.sin(2 * np.pi * rng.choice(low) * tt) + np.sin(2 * np.pi * rng.choice(high) * tt)
    return _normalise(out, -10)


def hum(seconds: float, rng: np.random.Generator) -> np.ndarray:
    # Mains hum: 50 Hz and its harmonics, under a little hiss.
    t = _time(seconds)
    tone = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 8))
    return _normalise(tone + 0.02 * rng.standard_normal(len(t)), -14)


def sweep(seconds: float, rng: np.random.Generator) -> np.ndarray:
    # A logarithmic sine sweep 100 Hz - 6 kHz, repeated every 2 s.
    t = _time(seconds) % 2.0
    f0, f1, length = 100.0, 6000.0, 2.0
    k = np.log(f1 / f0)
    phase = 2 * np.pi * f0 * length / k * (np.exp(t / length * k) - 1)
    return (np.sin(phase) * _db(-12)).astype(np.float32)


def chords(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return _normalise(_notes(seconds, rng, voices=3, note_s=0.8), -8)


def melody(seconds: float, rng: np.random.Generator) -> np.ndarray:
    # One voice with vibrato, legato: the most voice-like of the music signals.
    scale = 196.0 * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12]) / 12)
    t = _time(seconds)
    note = (t / 0.4).astype(int)
    freqs = rng.choice(scale, note.max() + 1)[note]
    vibrato = 1 + 0.01 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(freqs * vibrato) / RATE
    voice = sum(np.sin(k * phase) / k**1.5 for k in range(1, 10))
    return _normalise(voice, -8)


def drums(seconds: float, rng: np.random.Generator) -> np.ndarray:
    # Kick on the beat, snare on the off-beat, hi-hat on eighths, at 120 bpm.
    out = np.zeros(int(seconds * RATE))
    eighth = int(0.25 * RATE)
    for i, begin in enumerate(range(0, len(out), eighth)):
        n = min(eighth, len(out) - begin)
        t = np.arange(n) / RATE
        hit = 0.3 * rng.standard_normal(n) * np.exp(-t * 80)  # hi-hat
        if i % 4 == 0:
            hit += np.sin(2 * np.pi * (50 + 100 * np.exp(-t * 30)) * t) * np.exp(-t * 12)
        if i % 4 == 2:
            hit += 0.8 * rng.standard_normal(n) * np.exp(-t * 25)
        out[begin : begin + n] += hit
    return _normalise(out, -6)


def music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    # Chords, a melody and drums together.
    mix = chords(seconds, rng) + 0.7 * melody(seconds, rng) + 0.8 * drums(seconds, rng)
    return _normalise(mix, -6)


def keyboard(seconds: float, rng: np.random.Generator) -> np.ndarray:
    # Typing: 3-8 ms clicks of filtered noise, 80-300 ms apart in bursts, with pauses.
    out = np.zeros(int(seconds * RATE))
    at = 0
    while at < len(out):
        for _ in range(rng.integers(3, 12)):
            n = min(int(rng.uniform(0.003, 0.008) * RATE), len(out) - at)
            if n <= 0:
                break
            click = rng.standard_normal(n) * np.exp(-np.arange(n) / (0.0015 * RATE))
            out[at : at + n] += click * rng.uniform(0.3, 1.0)
            at += int(rng.uniform(0.08, 0.3) * RATE)
        at += int(rng.uniform(0.3, 1.5) * RATE)
    return _normalise(np.diff(out, prepend=0.0), -6)  # the difference brightens it, as a mic does


GENERATED: dict[str, Generator] = {
    "digital_silence": digital_silence,
    "dither": dither,
    "white_noise": white_noise,
    "loud_white_noise": loud_white_noise,
    "pink_noise": pink_noise,
    "brown_noise": brown_noise,
    "noise_bursts": noise_bursts,
    "tone_440": tone_440,
    "beeps": beeps,
    "dtmf": dtmf,
    "hum": hum,
    "sweep": sweep,
    "chords": chords,
    "melody": melody,
    "drums": drums,
    "music": music,
    "keyboard": keyboard,
}


def generate(name: str, seconds: float, seed: int = 0) -> np.ndarray:
    return GENERATED[name](seconds, np.random.default_rng(seed)).astype(np.float32)


# --------------------------------------------------------------------------- real recordings

NON_SPEECH_CLIPS = ("none_near_silence_1s.wav", "none_noise_speechbrain_noise5.wav", "none_laughter_4s.wav")


def speech_free_parts(
    audio: np.ndarray, speech: list[tuple[int, int]], margin_s: float = 0.3, min_s: float = 0.3
) -> list[np.ndarray]:
    """The stretches of ``audio`` at least ``margin_s`` away from every speech region.

    ``speech`` holds (start, end) sample indices, e.g. from faster_whisper.vad's offline
    get_speech_timestamps. The margin keeps breaths and the tails of words out.
    """
    margin = int(margin_s * RATE)
    parts, at = [], 0
    for start, end in sorted(speech):
        if start - margin - at >= min_s * RATE:
            parts.append(audio[at : start - margin])
        at = max(at, end + margin)
    if len(audio) - at >= min_s * RATE:
        parts.append(audio[at:])
    return parts
