"""`whisperwire bench` (or `python benchmarks/bench.py`): N live streams against a server,
measured as a user would feel them.

For each N, a fresh server is started (so its CPU seconds and peak memory belong to that run)
and N concurrent WebSocket streams play the manifest's clips at real-time pace, in frames of
20-40 ms, clips separated by silence; each stream starts at another clip, so they do not
speak in step. Measured:

- final latency: arrival of an utterance's final minus the wall time at which its last
  speech sample was sent. Where speech ends is found offline, from the very samples sent, by
  the Silero VAD with the server's rule (speech from p >= 0.5, ended after the silence window
  of windows under 0.35) — never from times the server reports. Its floor is the silence window;
- time to the first partial after speech starts, and the longest wait between partials while
  speech goes on;
- WER against the manifest's references (Whisper's English normaliser), streaming (finals of
  each clip joined) and offline (each whole clip decoded once, 30 s windows, same model);
- word delivery: each reference word the finals hold (the stream's finals and the references of
  its clips aligned whole, so a word that rides in a later final is found there), the final that
  carries it, and that final's arrival minus the wall time the word's last sample was sent
  (offline Whisper's word times say when it was spoken); also minus the end of the speech of the
  turn it was spoken in (the first speech stretch whose silence window ended after the word),
  which for a word in its own turn's final is that final's latency. A word carried by the final
  of a later turn is a late word;
- per utterance with partials: an empty final after a partial with words, and the words of the
  last partial its final lacks;
- reference words the finals lack, and of those the ones at an utterance's edge: within 1 s of
  a final's start or end or of a stretch of speech the VAD marks, the reference words being
  dated by aligning them with the offline decode's word times; the same count for the offline
  decode at the same edges, the floor a stream could reach;
- the server's CPU seconds and peak resident memory, streams that fell behind (final latency
  rising through the run), finals missing, duplicated or out of order.

The same run can drive a WhisperLive server (`--whisperlive-python`), started from another
Python environment on the same CTranslate2 model directory and spoken to in its own protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from whisperwire.endpointer import NEG_THRESHOLD_GAP as VAD_END_GAP  # speech ends under threshold - 0.15
from whisperwire.protocol import VADConfig
from whisperwire.values import SAMPLE_RATE, WINDOW_SAMPLES

VAD_THRESHOLD = VADConfig().threshold  # the protocol's default, which the streams keep
DEFAULT_MANIFEST = Path("..") / "shared" / "audio" / "manifest.tsv"
BEHIND_RISE_S = 0.5  # a stream whose latency rose this much from its first to last third fell behind
PARTIAL_TARGET_GAP_S = 1.0


def _require_extra() -> None:
    try:
        import jiwer  # noqa: F401
        import matplotlib  # noqa: F401
        import psutil  # noqa: F401
        import rich  # noqa: F401
        import whisper_normalizer  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"whisperwire bench needs its extra: pip install 'whisperwire[bench]' ({exc})") from None


# --------------------------------------------------------------------------- the audio played


@dataclass(frozen=True)
class Clip:
    file: str
    path: Path
    duration_s: float
    reference: str


def read_manifest(path: Path, language: str, only: Sequence[str] = ()) -> list[Clip]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [
        Clip(row["file"], path.parent / row["file"], float(row["duration_s"]), row["reference_transcript"])
        for row in rows
        if row["language"] == language
        and row["reference_transcript"].strip()
        and (not only or any(part in row["file"] for part in only))
    ]


@dataclass(frozen=True)
class Region:
    """Speech found offline, in samples: [start, end), end one past the last speech sample."""

    start: int
    end: int


@dataclass(frozen=True)
class Placed:
    clip: Clip
    start: int  # sample where the clip begins in the stream
    end: int


@dataclass
class Programme:
    """What one stream plays: clips and silences as one PCM, with where speech is."""

    pcm: bytes  # s16le mono 16 kHz
    placed: list[Placed]
    regions: list[Region]

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE


def build_programme(clips: Sequence[Clip], first: int, gap_s: float, seconds: float | None, vad: Any, min_silence_ms: int, audio: dict[str, np.ndarray]) -> Programme:
    """Clips from index `first` on (wrapping), each followed by `gap_s` of digital silence,
    until every clip played once or `seconds` of audio are reached."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.int16)
    pieces: list[np.ndarray] = [gap]
    placed: list[Placed] = []
    at = len(gap)
    for i in range(len(clips)):
        clip = clips[(first + i) % len(clips)]
        samples = audio[clip.file]
        placed.append(Placed(clip, at, at + len(samples)))
        pieces += [samples, gap]
        at += len(samples) + len(gap)
        if seconds is not None and at >= seconds * SAMPLE_RATE:
            break
    pcm16 = np.concatenate(pieces)
    return Programme(pcm16.tobytes(), placed, speech_regions(pcm16.astype(np.float32) / 32768, vad, min_silence_ms))


def speech_regions(audio: np.ndarray, vad: Any, min_silence_ms: int) -> list[Region]:
    """The server's end-of-speech rule, applied to the whole stream at once (whole windows)."""
    usable = len(audio) // WINDOW_SAMPLES * WINDOW_SAMPLES
    probs = vad.new_stream().probabilities(audio[:usable])
    min_silence = min_silence_ms * SAMPLE_RATE // 1000
    regions: list[Region] = []
    start: int | None = None
    silence_start: int | None = None
    for index, prob in enumerate(probs):
        begin = index * WINDOW_SAMPLES
        if start is None:
            if prob < VAD_THRESHOLD:
                continue
            start, silence_start = begin, None
        if prob >= VAD_THRESHOLD - VAD_END_GAP:
            silence_start = None
        elif silence_start is None:
            silence_start = begin
        if silence_start is not None and begin + WINDOW_SAMPLES - silence_start >= min_silence:
            regions.append(Region(start, silence_start))
            start = None
    if start is not None:  # still speaking when the stream ended: terminate ends it
        regions.append(Region(start, silence_start if silence_start is not None else usable))
    return regions


# --------------------------------------------------------------------------- what a stream saw


@dataclass
class Seen:
    """One transcript message, reduced to what is scored."""

    arrival: float  # monotonic
    final: bool
    key: str  # whisperwire: the transcription number; WhisperLive: the segment's start
    text: str
    spans: list[tuple[float, float]]  # segment times, seconds of stream audio


@dataclass
class StreamLog:
    frame_ends: list[int] = field(default_factory=list)  # sample index one past each frame
    sent: list[float] = field(default_factory=list)  # monotonic time each frame left
    seen: list[Seen] = field(default_factory=list)
    refused: str | None = None  # the server turned the stream away (busy)
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0

    def sent_at(self, sample: int) -> float:
        """Wall time the frame holding `sample` was sent."""
        index = bisect.bisect_right(self.frame_ends, sample)
        return self.sent[min(index, len(self.sent) - 1)]


class Driver(Protocol):
    name: str

    async def play(self, programme: Programme, log: StreamLog, pace: Pacer) -> None: ...


class Pacer:
    """Sends frames of 20-40 ms at real-time pace; deadlines come from the clock, so pacing does
    not drift with sleep overshoot. A live source has a frame once its last sample exists."""

    def __init__(self, seed: int, speed: float, frame_ms: tuple[int, int], on_sent: Callable[[float], None]) -> None:
        self._random = random.Random(seed)
        self.speed = speed
        self.frame_ms = frame_ms
        self.on_sent = on_sent

    async def frames(self, pcm: bytes, log: StreamLog) -> Any:
        start = time.monotonic()
        log.started = start
        offset = 0
        while offset < len(pcm):
            samples = SAMPLE_RATE * self._random.randint(*self.frame_ms) // 1000
            frame = pcm[offset : offset + 2 * samples]
            offset += len(frame)
            if self.speed > 0:
                await asyncio.sleep(max(0.0, start + offset / 2 / SAMPLE_RATE / self.speed - time.monotonic()))
            yield frame
            log.frame_ends.append(offset // 2)
            log.sent.append(time.monotonic())
            self.on_sent(len(frame) / 2 / SAMPLE_RATE)


class WhisperwireDriver:
    name = "whisperwire"

    def __init__(self, url: str, api_key: str | None, metadata: dict[str, Any]) -> None:
        self.url, self.api_key, self.metadata = url, api_key, metadata

    async def play(self, programme: Programme, log: StreamLog, pace: Pacer) -> None:
        from whisperwire.client import ServerError, WhisperwireError, connect

        async def send(stream: Any) -> None:
            async for frame in pace.frames(programme.pcm, log):
                await stream.send(frame)
            await stream.close()

        async def receive(stream: Any) -> None:
            async for message in stream:
                spans = [(s.start_time, s.end_time) for s in message.segments]
                log.seen.append(Seen(time.monotonic(), message.is_final, str(message.transcription_num), message.transcript, spans))

        try:
            async with connect(self.url, api_key=self.api_key, metadata=self.metadata) as stream:
                await _together(send(stream), receive(stream))
        except ServerError as exc:
            if exc.code == "server_busy":
                log.refused = exc.message
            else:
                log.error = str(exc)
        except WhisperwireError as exc:
            log.error = f"{type(exc).__name__}: {exc}"
        log.ended = time.monotonic()


class WhisperLiveDriver:
    """WhisperLive's protocol: an options JSON, float32 frames, END_OF_AUDIO; it answers with its
    last segments, the newest one still open (`completed: false`) until it is done."""

    name = "whisperlive"

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model

    async def play(self, programme: Programme, log: StreamLog, pace: Pacer) -> None:
        from websockets.asyncio.client import connect as ws_connect
        from websockets.exceptions import ConnectionClosed

        uid = uuid.uuid4().hex
        options = {
            # WhisperLive's own client defaults, with the language and model fixed.
            "uid": uid, "language": "en", "task": "transcribe", "model": self.model, "use_vad": True,
            "send_last_n_segments": 10, "no_speech_thresh": 0.45, "clip_audio": False, "same_output_threshold": 10,
        }
        try:
            async with ws_connect(self.url, max_size=None, open_timeout=30, compression=None) as ws:
                await ws.send(json.dumps(options))
                ready = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if ready.get("status") == "WAIT":
                    log.refused = f"WAIT {ready.get('message')}"
                    return
                if ready.get("message") != "SERVER_READY":
                    log.error = f"unexpected first message {ready}"
                    return

                async def send() -> None:
                    async for frame in pace.frames(programme.pcm, log):
                        samples = np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768
                        await ws.send(samples.tobytes())
                    await ws.send(b"END_OF_AUDIO")

                async def receive() -> None:
                    try:
                        async for raw in ws:
                            self._record(json.loads(raw), log)
                    except ConnectionClosed:
                        pass

                await _together(send(), receive())
        except (OSError, ConnectionClosed, TimeoutError) as exc:
            log.error = f"{type(exc).__name__}: {exc}"
        log.ended = time.monotonic()

    @staticmethod
    def _record(message: dict[str, Any], log: StreamLog) -> None:
        now = time.monotonic()
        for segment in message.get("segments", []):
            span = [(float(segment["start"]), float(segment["end"]))]
            # Completed segments are re-sent with every message; the first arrival counts.
            key = f"{float(segment['start']):.3f}"
            if segment.get("completed"):
                if not any(s.final and s.key == key for s in log.seen):
                    log.seen.append(Seen(now, True, key, segment["text"], span))
            else:
                log.seen.append(Seen(now, False, key, segment["text"], span))


async def _together(*coroutines: Any) -> None:
    """Run until all finish; the first failure cancels the rest."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------- scoring


@dataclass
class UtteranceScore:
    speech_start_s: float
    speech_end_s: float
    final_latency_s: float | None  # None: no final covered this speech
    first_partial_s: float | None
    longest_partial_wait_s: float | None  # while speech went on, from its start


@dataclass
class StreamScore:
    utterances: list[UtteranceScore]
    hypotheses: dict[int, str]  # placed clip index -> finals joined
    edges: dict[int, list[float]] = field(default_factory=dict)  # clip index -> its finals' start and end, s into the clip
    # Every final: its number, arrival (s after the stream's first frame), text, first start and last end.
    final_log: list[tuple[str, float, str, float | None, float | None]] = field(default_factory=list)
    finals: int = 0
    partials: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    fell_behind: bool = False
    refused: str | None = None
    error: str | None = None


def _overlap(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    return sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in spans)


def _nearest(spans: list[tuple[float, float]], bounds: list[tuple[float, float]]) -> int | None:
    """Index of the bounds the spans overlap most; with no overlap, the closest ones."""
    if not spans or not bounds:
        return None

    def rank(i: int) -> tuple[float, float]:
        lo, hi = bounds[i]
        gap = max(lo - spans[-1][1], spans[0][0] - hi, 0.0)
        return (_overlap(spans, lo, hi), -gap)

    return max(range(len(bounds)), key=rank)


def score_stream(programme: Programme, log: StreamLog, partials_expected: bool, open_tail_counts: bool = False) -> StreamScore:
    """Latency and cadence per speech region, transcripts per clip, bookkeeping errors.

    ``open_tail_counts``: WhisperLive never completes the segment still open when the audio
    ends; for its WER, that segment's last text counts as what the user saw (not as a final)."""
    score = StreamScore([], {}, refused=log.refused, error=log.error)
    if log.refused or not log.sent:
        return score
    regions = [(r.start / SAMPLE_RATE, r.end / SAMPLE_RATE) for r in programme.regions]
    clips = [(p.start / SAMPLE_RATE, p.end / SAMPLE_RATE) for p in programme.placed]
    finals = [s for s in log.seen if s.final]
    partials = [s for s in log.seen if not s.final]
    score.finals, score.partials = len(finals), len(partials)
    score.final_log = [
        (s.key, round(s.arrival - log.started, 3), s.text, s.spans[0][0] if s.spans else None, s.spans[-1][1] if s.spans else None)
        for s in finals
    ]
    keys = [s.key for s in finals]
    score.duplicated = len(keys) - len(set(keys))
    numbers = [int(k) for k in keys if k.isdigit()]
    score.out_of_order = sum(1 for a, b in zip(numbers, numbers[1:]) if b <= a)

    # Where each utterance (key) belongs: its final's segments, else its last partial's.
    spans_of: dict[str, list[tuple[float, float]]] = {}
    for seen in partials + finals:
        if seen.spans:
            spans_of[seen.key] = seen.spans
    region_of = {key: _nearest(spans, regions) for key, spans in spans_of.items()}
    for index, region in enumerate(programme.regions):
        keys_here = {k for k, r in region_of.items() if r == index}
        started = log.sent_at(region.start)
        ended = log.sent_at(region.end - 1)
        # A final that came before the speech ended cannot hold its end (WhisperLive completes
        # segments mid-speech): only finals after the end can close the utterance.
        arrivals = [s.arrival for s in finals if s.key in keys_here and s.arrival >= ended]
        partial_times = sorted(s.arrival for s in partials if s.key in keys_here and s.arrival <= ended)
        # Cadence counts on speech longer than a second, from its start to its end.
        measured = partials_expected and region.end - region.start > SAMPLE_RATE
        waits = np.diff([started, *partial_times, ended]) if measured else []
        score.utterances.append(
            UtteranceScore(
                speech_start_s=region.start / SAMPLE_RATE,
                speech_end_s=region.end / SAMPLE_RATE,
                final_latency_s=max(arrivals) - ended if arrivals else None,
                first_partial_s=partial_times[0] - started if partial_times else None,
                longest_partial_wait_s=float(max(waits)) if len(waits) else None,
            )
        )
    texts = list(finals)
    if open_tail_counts and partials and (not finals or partials[-1].arrival > finals[-1].arrival):
        texts.append(partials[-1])
    for seen in sorted(texts, key=lambda s: (s.spans[0][0] if s.spans else 0.0)):
        clip = _nearest(seen.spans, clips)
        if clip is not None and seen.text.strip():
            score.hypotheses[clip] = (score.hypotheses.get(clip, "") + " " + seen.text.strip()).strip()
            begins = clips[clip][0]
            score.edges.setdefault(clip, []).extend([seen.spans[0][0] - begins, seen.spans[-1][1] - begins])
    latencies = [u.final_latency_s for u in score.utterances if u.final_latency_s is not None]
    third = len(latencies) // 3
    if third >= 2:
        score.fell_behind = float(np.median(latencies[-third:]) - np.median(latencies[:third])) > BEHIND_RISE_S
    return score


def normaliser() -> Callable[[str], str]:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: all errors over all reference words, after Whisper's English normaliser."""
    import jiwer

    normalise = normaliser()
    return float(jiwer.wer([normalise(r) for r in references], [normalise(h) for h in hypotheses]))


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    if not len(values):
        return {"n": 0, "mean": None, "p50": None, "p95": None, "max": None}
    array = np.asarray(values, dtype=float)
    return {
        "n": len(array), "mean": float(array.mean()), "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)), "max": float(array.max()),
    }


# --------------------------------------------------------------------------- servers


class ServerProcess:
    """A server in a subprocess on a free loopback port, stopped with SIGTERM; CPU and peak RSS
    are read from /proc (psutil)."""

    name = "server"

    def __init__(self, command: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench_{self.name}_", suffix=".log", delete=False)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start; log: {self.log.name}")
            time.sleep(0.25)

    def ready(self) -> bool:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def peak_rss_mb(self) -> float | None:
        try:  # the kernel's high-water mark: exact, where sampling would miss short peaks
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class WhisperwireServer(ServerProcess):
    name = "whisperwire"

    def __init__(self, model: str, extra: Sequence[str]) -> None:
        port = _free_port()
        command = [sys.executable, "-m", "whisperwire.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--model", model, "--log-level", "warning", *extra]
        super().__init__(command, port)
        self.url = f"ws://127.0.0.1:{port}/v1/websocket"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def metrics(self) -> dict[tuple[str, str], float]:
        return scrape(f"http://127.0.0.1:{self.port}/metrics")


STAGES = ("queue", "recognition", "encode", "send")


def scrape(metrics_url: str) -> dict[tuple[str, str], float]:
    """A server's metrics as {(sample name, its one label's value or ""): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, next(iter(sample.labels.values()), "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if len(sample.labels) <= 1
    }


def final_stages(metrics: dict[tuple[str, str], float]) -> dict[str, float]:
    """The server's mean time per final in each stage after the final was asked for
    (`whisperwire_final_stage_seconds`, docs/serving.md), and the mean of the whole."""
    means = {}
    for stage in (*STAGES, ""):
        prefix = "whisperwire_final_stage_seconds" if stage else "whisperwire_final_latency_seconds"
        count = metrics.get((f"{prefix}_count", stage), 0.0)
        means[stage or "asked_to_sent"] = metrics.get((f"{prefix}_sum", stage), 0.0) / count if count else float("nan")
    return means


def draft_outcomes(metrics: dict[tuple[str, str], float]) -> dict[str, int]:
    """Drafts begun and what became of them (`whisperwire_drafts_total`)."""
    outcomes = {o: int(metrics.get(("whisperwire_drafts_total", o), 0)) for o in ("promoted", "withdrawn", "wasted")}
    outcomes["ran_alone"] = int(metrics.get(("whisperwire_inference_seconds_count", "draft"), 0))
    return outcomes


class WhisperLiveServer(ServerProcess):
    """WhisperLive's faster_whisper backend from its own environment, one shared model.

    HOME points at an empty directory and the hub is offline: nothing is fetched."""

    name = "whisperlive"

    def __init__(self, python: str, model_dir: Path, max_clients: int) -> None:
        port = _free_port()
        code = (
            "from whisper_live.server import TranscriptionServer\n"
            f"TranscriptionServer().run('127.0.0.1', {port}, backend='faster_whisper', "
            f"faster_whisper_custom_model_path={str(model_dir)!r}, single_model=True, "
            f"max_clients={max_clients}, max_connection_time=3600)\n"
        )
        home = tempfile.mkdtemp(prefix="bench_whisperlive_home_")
        env = {**os.environ, "HOME": home, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        super().__init__([python, "-c", code], port, env)
        self.url = f"ws://127.0.0.1:{port}"
        self.model_dir = model_dir

    def ready(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- a run


@dataclass
class RunResult:
    system: str
    streams: int
    stream_scores: list[StreamScore]
    programmes: list[Programme]
    server_cpu_s: float | None
    server_peak_rss_mb: float | None
    wall_s: float
    metrics: dict[tuple[str, str], float] | None = None  # whisperwire's /metrics at the end
    summary: dict[str, Any] = field(default_factory=dict)
    logs: list[StreamLog] = field(default_factory=list)  # what each stream sent and saw
    min_silence_s: float = 0.3  # the streams' silence window, which says when a turn was over


# A reference word is deleted at an utterance's edge when it is aligned to no hypothesis word and
# lies this close to the start or end of a final, or of a stretch of speech the VAD marks.
EDGE_S = 1.0


@dataclass(frozen=True)
class Offline:
    """A clip decoded whole by faster-whisper: its text, and its normalised words' times."""

    text: str
    words: list[tuple[str, float, float]]  # (normalised word, middle, end of the word), s into the clip
    starts: list[float] = field(default_factory=list)  # where each word Whisper wrote starts, s into the clip


def reference_times(reference: str, offline: Offline, at: str = "middle") -> list[float]:
    """When each normalised reference word was spoken (its "middle" or its "end"):
    the time of the offline word it aligns with; words offline Whisper missed are spread evenly
    between their neighbours."""
    import jiwer

    ref = normaliser()(reference).split()
    times: list[float | None] = [None] * len(ref)
    if ref and offline.words:
        hyp = " ".join(w[0] for w in offline.words)
        column = {"middle": 1, "end": 2}[at]
        for chunk in jiwer.process_words(" ".join(ref), hyp).alignments[0]:
            if chunk.type in ("equal", "substitute"):
                for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
                    times[chunk.ref_start_idx + k] = offline.words[chunk.hyp_start_idx + k][column]
    known = [(i, t) for i, t in enumerate(times) if t is not None]
    if not known:
        return [0.0] * len(ref)
    return [float(np.interp(i, [k for k, _ in known], [t for _, t in known])) for i in range(len(ref))]


def edge_deletions(reference: str, hypothesis: str, offline: Offline, edges: list[float]) -> tuple[int, int]:
    """(reference words the hypothesis lacks, those of them within EDGE_S of an edge)."""
    import jiwer

    normalise = normaliser()
    ref, hyp = normalise(reference).split(), normalise(hypothesis).split()
    if not ref:
        return 0, 0
    if not hyp:
        deleted = list(range(len(ref)))
    else:
        chunks = jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]
        deleted = [i for c in chunks if c.type == "delete" for i in range(c.ref_start_idx, c.ref_end_idx)]
    times = reference_times(reference, offline)
    at_edge = sum(1 for i in deleted if any(abs(times[i] - e) <= EDGE_S for e in edges))
    return len(deleted), at_edge


def clip_edges(score: StreamScore, programme: Programme, index: int) -> list[float]:
    """The clip's utterance edges in seconds into it: its finals' and the VAD's speech stretches'."""
    placed = programme.placed[index]
    edges = list(score.edges.get(index, []))
    for region in programme.regions:
        if placed.start <= region.start < placed.end:
            edges += [(region.start - placed.start) / SAMPLE_RATE, (region.end - placed.start) / SAMPLE_RATE]
    return edges


@dataclass
class Delivery:
    """When each reference word a stream's finals hold reached the client, and in which turn."""

    spoken_s: list[float] = field(default_factory=list)  # final's arrival - the word's last sample sent
    after_turn_s: list[float] = field(default_factory=list)  # final's arrival - its turn's speech end sent
    late: list[dict[str, Any]] = field(default_factory=list)  # words carried by a later turn's final
    clip_last_s: list[float] = field(default_factory=list)  # spoken_s of each clip's last word
    words: int = 0  # reference words
    delivered: int = 0  # of them, aligned with a word of a final


def word_delivery(programme: Programme, log: StreamLog, offline: dict[str, Offline], min_silence_s: float) -> Delivery:
    """Each reference word of the stream, aligned with the words of all its finals at once (so a
    word that rides in a later final, even one that belongs to the next clip, is found there):
    which final carries it, when that final arrived, and whether that final is its turn's.

    A word's turn is the first speech stretch (the server's rule, run offline) whose silence
    window ended after the word did: the final due then is the one that should hold it. (Not
    where it began: Whisper's alignment starts the first word after a pause early, often at the
    previous word's end.) A soft last word that outlasts the silence window is given to the
    next turn, so late words are a lower bound; the clip's-last-word delivery sees those. A
    final's turn is the stretch its segments overlap most."""
    import jiwer

    normalise = normaliser()
    delivery = Delivery()
    ref_words: list[str] = []
    ref_ends: list[float] = []  # stream seconds
    last_words: set[int] = set()  # the index of each clip's last word
    for placed in programme.placed:
        words = normalise(placed.clip.reference).split()
        ref_words += words
        last_words.add(len(ref_words) - 1)
        ref_ends += [placed.start / SAMPLE_RATE + t for t in reference_times(placed.clip.reference, offline[placed.clip.file], at="end")]
    delivery.words = len(ref_words)
    finals = [s for s in log.seen if s.final]
    hyp_words: list[str] = []
    carrier: list[int] = []  # hypothesis word -> index of its final
    for index, seen in enumerate(finals):
        words = normalise(seen.text).split()
        hyp_words += words
        carrier += [index] * len(words)
    if not ref_words or not hyp_words or not log.sent:
        return delivery
    regions = programme.regions
    due = [r.end / SAMPLE_RATE + min_silence_s for r in regions]
    bounds = [(r.start / SAMPLE_RATE, r.end / SAMPLE_RATE) for r in regions]
    turn_of_final = [_nearest(seen.spans, bounds) for seen in finals]
    for chunk in jiwer.process_words(" ".join(ref_words), " ".join(hyp_words)).alignments[0]:
        if chunk.type not in ("equal", "substitute"):
            continue
        for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
            i, final = chunk.ref_start_idx + k, carrier[chunk.hyp_start_idx + k]
            arrival, spoken = finals[final].arrival, ref_ends[i]
            delivery.delivered += 1
            delivery.spoken_s.append(arrival - log.sent_at(max(0, round(spoken * SAMPLE_RATE) - 1)))
            if i in last_words:
                delivery.clip_last_s.append(delivery.spoken_s[-1])
            turn = bisect.bisect_left(due, spoken)
            if turn == len(regions):
                continue  # after the last stretch of speech the VAD marks: no turn to compare
            delivery.after_turn_s.append(arrival - log.sent_at(regions[turn].end - 1))
            carried = turn_of_final[final]
            if carried is not None and carried > turn:
                delivery.late.append({
                    "word": ref_words[i], "spoken_s": round(spoken, 2), "turn_end_s": round(bounds[turn][1], 2),
                    "final": finals[final].key, "final_text": finals[final].text,
                })
    return delivery


@dataclass
class TurnDefects:
    """Per utterance that had a partial with words: what its final dropped of it."""

    with_partial: int = 0  # utterances whose partial had words
    empty_finals: int = 0  # of them, finals with no words (or no final at all)
    lost_words: int = 0  # words of an utterance's last partial its final lacks (an alignment's deletions)
    examples: list[dict[str, str]] = field(default_factory=list)


def turn_defects(log: StreamLog) -> TurnDefects:
    import jiwer

    normalise = normaliser()
    last_partial: dict[str, str] = {}
    for seen in log.seen:
        if not seen.final and normalise(seen.text).split():
            last_partial[seen.key] = seen.text
    final_text = {s.key: s.text for s in log.seen if s.final}
    defects = TurnDefects(with_partial=len(last_partial))
    for key, partial in last_partial.items():
        final = normalise(final_text.get(key, "")).split()
        words = normalise(partial).split()
        if not final:
            defects.empty_finals += 1
            lost = len(words)
        else:
            chunks = jiwer.process_words(" ".join(words), " ".join(final)).alignments[0]
            lost = sum(c.ref_end_idx - c.ref_start_idx for c in chunks if c.type == "delete")
        defects.lost_words += lost
        if lost:
            defects.examples.append({"utterance": key, "partial": partial, "final": final_text.get(key, "(none)")})
    return defects


def summarise(run: RunResult, offline: dict[str, Offline] | None) -> dict[str, Any]:
    admitted = [s for s in run.stream_scores if s.refused is None]
    utterances = [u for s in admitted for u in s.utterances]
    latencies = [u.final_latency_s for u in utterances if u.final_latency_s is not None]
    refs, hyps, offline_hyps = [], [], []
    deletions = at_edges = offline_deletions = offline_at_edges = 0
    by_clip: dict[str, list[int]] = {}  # clip -> deletions, at edges, offline's, offline's at edges
    for score, programme in zip(run.stream_scores, run.programmes):
        if score.refused is not None or score.error is not None:
            continue
        for index, placed in enumerate(programme.placed):
            refs.append(placed.clip.reference)
            hyps.append(score.hypotheses.get(index, ""))
            if offline is not None:
                found = offline[placed.clip.file]
                offline_hyps.append(found.text)
                edges = clip_edges(score, programme, index)
                counts = [
                    *edge_deletions(refs[-1], hyps[-1], found, edges),
                    # Offline Whisper's own, counted at the same edges: the floor for the stream's.
                    *edge_deletions(refs[-1], found.text, found, edges),
                ]
                deletions, at_edges = deletions + counts[0], at_edges + counts[1]
                offline_deletions, offline_at_edges = offline_deletions + counts[2], offline_at_edges + counts[3]
                totals = by_clip.setdefault(placed.clip.file, [0, 0, 0, 0])
                by_clip[placed.clip.file] = [a + b for a, b in zip(totals, counts)]
    long_utterances = [u for u in utterances if u.longest_partial_wait_s is not None]
    delivered = [
        word_delivery(programme, log, offline, run.min_silence_s)
        for score, programme, log in zip(run.stream_scores, run.programmes, run.logs)
        if offline is not None and score.refused is None and score.error is None
    ]
    defects = [turn_defects(log) for score, log in zip(run.stream_scores, run.logs) if score.refused is None]
    return {
        "system": run.system,
        "streams": run.streams,
        "refused": sum(s.refused is not None for s in run.stream_scores),
        "errors": [s.error for s in run.stream_scores if s.error],
        "final_latency_s": percentiles(latencies),
        "speech_without_final": sum(u.final_latency_s is None for u in utterances),
        "first_partial_s": percentiles([u.first_partial_s for u in utterances if u.first_partial_s is not None]),
        "longest_partial_wait_s": percentiles([u.longest_partial_wait_s for u in long_utterances]),
        "partial_every_1s_share": (
            sum(u.longest_partial_wait_s <= PARTIAL_TARGET_GAP_S for u in long_utterances) / len(long_utterances)  # type: ignore[operator]
            if long_utterances
            else None
        ),
        "wer_streaming": word_error_rate(refs, hyps) if refs else None,
        "wer_offline": word_error_rate(refs, offline_hyps) if offline_hyps else None,
        "deletions": deletions if offline is not None else None,
        "edge_deletions": at_edges if offline is not None else None,
        "offline_deletions": offline_deletions if offline is not None else None,
        "offline_edge_deletions": offline_at_edges if offline is not None else None,
        # Which clips the deletions are in: [stream's, at edges, offline's, offline's at edges].
        "deletions_by_clip": by_clip if offline is not None else None,
        # Every reference word the finals hold: its final's arrival after the word was spoken, and
        # after its turn's speech ended; words carried by a later turn's final.
        "word_delivery_s": percentiles([t for d in delivered for t in d.spoken_s]) if offline is not None else None,
        "word_after_turn_s": percentiles([t for d in delivered for t in d.after_turn_s]) if offline is not None else None,
        "clip_last_word_s": percentiles([t for d in delivered for t in d.clip_last_s]) if offline is not None else None,
        "words_delivered": sum(d.delivered for d in delivered) if offline is not None else None,
        "late_words": sum(len(d.late) for d in delivered) if offline is not None else None,
        "late_word_list": [w for d in delivered for w in d.late] if offline is not None else None,
        "utterances_with_partial": sum(d.with_partial for d in defects),
        "empty_finals_after_partial": sum(d.empty_finals for d in defects),
        "partial_words_lost": sum(d.lost_words for d in defects),
        "partial_words_lost_list": [e for d in defects for e in d.examples],
        "fell_behind": sum(s.fell_behind for s in admitted),
        "duplicated_finals": sum(s.duplicated for s in admitted),
        "out_of_order_finals": sum(s.out_of_order for s in admitted),
        "finals": sum(s.finals for s in admitted),
        "partials": sum(s.partials for s in admitted),
        # Final latency in parts: speech end to the final asked for (the silence window, VAD
        # batches and the hop to the session) is the client's p50 less the server's mean after.
        "final_stages_mean_s": final_stages(run.metrics) if run.metrics else None,
        "drafts": draft_outcomes(run.metrics) if run.metrics else None,
        "finals_batched": int(run.metrics.get(("whisperwire_finals_batched_total", ""), 0)) if run.metrics else None,
        "finals_again": int(run.metrics.get(("whisperwire_finals_recognised_again_total", ""), 0)) if run.metrics else None,
        "server_cpu_s": run.server_cpu_s,
        "server_cores": run.server_cpu_s / run.wall_s if run.server_cpu_s is not None and run.wall_s else None,
        "server_peak_rss_mb": run.server_peak_rss_mb,
        "wall_s": run.wall_s,
        "audio_s_per_stream": float(np.mean([p.seconds for p in run.programmes])) if run.programmes else 0.0,
    }


async def play_all(driver: Driver, programmes: list[Programme], args: argparse.Namespace, advance: Callable[[float], None]) -> list[StreamLog]:
    logs = [StreamLog() for _ in programmes]

    async def one(index: int) -> None:
        # Streams join over the first second, as clients do; not all in the same instant.
        await asyncio.sleep(random.Random(args.seed + index).uniform(0, 1.0))
        pacer = Pacer(args.seed * 1000 + index, args.speed, (args.frame_ms_min, args.frame_ms_max), advance)
        await driver.play(programmes[index], logs[index], pacer)

    await asyncio.gather(*(one(i) for i in range(len(programmes))))
    return logs


def run_once(system: str, streams: int, clips: list[Clip], args: argparse.Namespace, vad: Any, audio: dict[str, np.ndarray], progress: Any) -> RunResult:
    programmes = [
        build_programme(clips, i, args.gap, args.seconds, vad, args.min_silence_ms, audio) for i in range(streams)
    ]
    server: ServerProcess | None = None
    driver: Driver
    if system == "whisperwire":
        if not args.url:
            server = WhisperwireServer(args.model, args.server_arg)
        driver = WhisperwireDriver(args.url or server.url, args.api_key, _metadata(args))  # type: ignore[union-attr]
    else:
        from whisperwire.models import resolve_model

        model_dir = resolve_model(args.model)
        server = WhisperLiveServer(args.whisperlive_python, model_dir, max_clients=streams + 4)
        driver = WhisperLiveDriver(server.url, str(model_dir))
    task = progress.add_task(f"{system} N={streams}", total=sum(p.seconds for p in programmes))
    try:
        if server is not None:
            server.wait_ready()
        cpu_before = server.cpu_seconds() if server is not None else None
        began = time.monotonic()
        logs = asyncio.run(play_all(driver, programmes, args, lambda s: progress.advance(task, s)))
        wall = time.monotonic() - began
        cpu = server.cpu_seconds() - cpu_before if server is not None and cpu_before is not None else None
        rss = server.peak_rss_mb() if server is not None else None
        metrics = server.metrics() if isinstance(server, WhisperwireServer) else None
    finally:
        if server is not None:
            server.stop()
    progress.update(task, completed=sum(p.seconds for p in programmes))
    partials_expected = system == "whisperlive" or args.partials  # WhisperLive always sends them
    scores = [score_stream(p, log, partials_expected, system == "whisperlive") for p, log in zip(programmes, logs)]
    return RunResult(system, streams, scores, programmes, cpu, rss, wall, metrics, logs=logs, min_silence_s=args.min_silence_ms / 1000)


def _metadata(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"encoding": "pcm_s16le", "sample_rate": SAMPLE_RATE}
    if args.partials:
        params["enable_partial_transcripts"] = True
        params["partial_transcript_interval_s"] = args.partial_interval
    return {
        # Sent explicitly: the offline rule must use the server's values.
        "streaming_vad_config": {"threshold": VAD_THRESHOLD, "min_silence_duration_ms": args.min_silence_ms},
        "streaming_params": params,
        "whisper_params": {"audio_language": "en"},
    }


def offline_transcripts(clips: list[Clip], model: str, audio: dict[str, np.ndarray]) -> dict[str, Offline]:
    """Each whole clip decoded once by faster-whisper, with full 30 s windows: the ceiling. Its
    word times date the reference words for the edge deletions."""
    from whisperwire.engine import DecodeOptions, load_engine

    engine = load_engine(model, fit_window=False)
    options = DecodeOptions(language="en", word_timestamps=True)
    normalise = normaliser()
    found: dict[str, Offline] = {}
    for clip in clips:
        result = engine.transcribe(audio[clip.file].astype(np.float32) / 32768, options)
        # A word's start, or the previous word's end where the alignment starts it earlier.
        spoken = [w for segment in result.segments for w in segment.words or ()]
        starts = [max(w.start, before.end if before else 0.0) for before, w in zip([None, *spoken], spoken)]
        words = [
            (token, (w.start + w.end) / 2, w.end) for w in spoken for token in normalise(w.word).split()
        ]
        found[clip.file] = Offline(result.text, words, starts)
    return found


def fade_last_words(audio: dict[str, np.ndarray], offline: dict[str, Offline], db: float) -> dict[str, np.ndarray]:
    """Each clip with its last word, as offline Whisper dates it, ``db`` dB quieter to the clip's
    end: a speaker trailing off, whose last word the VAD scores low."""
    faded = {}
    for name, samples in audio.items():
        words = offline[name].starts
        at = round(words[-1] * SAMPLE_RATE) if words else len(samples)
        out = samples.astype(np.float32)
        out[at:] *= 10 ** (db / 20)
        faded[name] = np.round(out).astype(np.int16)
    return faded


# --------------------------------------------------------------------------- reporting


def print_table(summaries: list[dict[str, Any]], console: Any) -> None:
    from rich.table import Table

    table = Table(title="whisperwire bench", show_lines=False)
    columns = [
        "system", "N", "refused", "final p50", "final p95", "final max", "no final", "1st partial p50",
        "partial wait p95", "WER stream", "WER offline", "deleted (at edges) stream / offline", "behind", "dup/order", "CPU cores", "peak RSS MB",
    ]
    for column in columns:
        table.add_column(column, justify="right")
    for s in summaries:
        fl, fp, pw = s["final_latency_s"], s["first_partial_s"], s["longest_partial_wait_s"]
        table.add_row(
            s["system"], str(s["streams"]), str(s["refused"]), _fmt(fl["p50"]), _fmt(fl["p95"]), _fmt(fl["max"]),
            str(s["speech_without_final"]), _fmt(fp["p50"]), _fmt(pw["p95"]), _fmt(s["wer_streaming"], "{:.1%}"),
            _fmt(s["wer_offline"], "{:.1%}"),
            "-" if s["deletions"] is None else f"{s['deletions']} ({s['edge_deletions']}) / {s['offline_deletions']} ({s['offline_edge_deletions']})",
            str(s["fell_behind"]),
            f"{s['duplicated_finals']}/{s['out_of_order_finals']}", _fmt(s["server_cores"]), _fmt(s["server_peak_rss_mb"], "{:.0f}"),
        )
    console.print(table)
    console.print("latencies in seconds; final latency = final's arrival - wall time its speech's last sample was sent")
    turns = Table(title="turns: which final carries each word, and when", show_lines=False)
    for column in (
        "system", "N", "final p50", "final p95", "word p50", "word p95", "word max", "after turn p50", "after turn p95",
        "after turn max", "clip's last word p50", "p95", "max", "late words", "empty final after partial", "partial words lost", "WER stream",
    ):
        turns.add_column(column, justify="right")
    for s in summaries:
        fl, wd, at = s["final_latency_s"], s["word_delivery_s"] or {}, s["word_after_turn_s"] or {}
        cl = s["clip_last_word_s"] or {}
        turns.add_row(
            s["system"], str(s["streams"]), _fmt(fl["p50"]), _fmt(fl["p95"]), _fmt(wd.get("p50")), _fmt(wd.get("p95")),
            _fmt(wd.get("max")), _fmt(at.get("p50")), _fmt(at.get("p95")), _fmt(at.get("max")),
            _fmt(cl.get("p50")), _fmt(cl.get("p95")), _fmt(cl.get("max")),
            "-" if s["late_words"] is None else str(s["late_words"]),
            f"{s['empty_finals_after_partial']} of {s['utterances_with_partial']}", str(s["partial_words_lost"]),
            _fmt(s["wer_streaming"], "{:.1%}"),
        )
    console.print(turns)
    console.print("word = a final's arrival - wall time the word's last sample was sent; after turn = - the end of its turn's "
                  "speech; late = carried by a later turn's final; the last two need --partials")
    for s in summaries:
        for word in (s["late_word_list"] or [])[:10]:
            console.print(f"  late: {word['word']!r} spoken {word['spoken_s']:.2f} s (turn ended {word['turn_end_s']:.2f} s), "
                          f"in final {word['final']}: {word['final_text']!r}")
    for s in summaries:
        if s.get("final_stages_mean_s"):
            parts = ", ".join(f"{k} {v:.3f}" for k, v in s["final_stages_mean_s"].items())
            mean = s["final_latency_s"]["mean"]
            console.print(f"{s['system']} N={s['streams']} per final, mean s: speech end to sent {_fmt(mean, '{:.3f}')} (client); after asked: {parts}")
            console.print(f"  drafts: {s['drafts']}; finals encoded in a batch: {s['finals_batched']}; recognised again alone: {s['finals_again']}")


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def plot(runs: list[RunResult], summaries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cdf, capacity) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        latencies = sorted(u.final_latency_s for s in run.stream_scores for u in s.utterances if u.final_latency_s is not None)
        if latencies:
            style = "-" if run.system == "whisperwire" else "--"
            cdf.plot(latencies, np.arange(1, len(latencies) + 1) / len(latencies), style, label=f"{run.system} N={run.streams}")
    cdf.set_xscale("log")
    cdf.set_xlabel("final latency (s)")
    cdf.set_ylabel("share of utterances")
    cdf.set_title("final latency CDF")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(fontsize=7)
    for system in dict.fromkeys(s["system"] for s in summaries):
        points = [(s["streams"], s["final_latency_s"]["p95"]) for s in summaries if s["system"] == system and s["final_latency_s"]["p95"] is not None]
        if points:
            capacity.plot(*zip(*points), "o-", label=system)
    capacity.axhline(1.5, color="grey", linestyle=":", label="1.5 s")
    capacity.set_xlabel("concurrent real-time streams (N)")
    capacity.set_ylabel("p95 final latency (s)")
    capacity.set_yscale("log")
    capacity.set_title("capacity")
    capacity.grid(True, which="both", alpha=0.3)
    capacity.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------- the command


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--streams", default="1", help="concurrent streams per run, comma-separated, e.g. 1,4,8,16 [%(default)s]")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="clips and references [%(default)s]")
    parser.add_argument("--clip", action="append", default=[], help="only clips whose file name contains this (repeatable)")
    parser.add_argument("--seconds", type=float, default=None, help="audio per stream; default: every clip once")
    parser.add_argument("--gap", type=float, default=1.5, help="seconds of silence between clips [%(default)s]")
    parser.add_argument("--speed", type=float, default=1.0, help="pace as a multiple of real time; 0: at once [%(default)s]")
    parser.add_argument("--frame-ms-min", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--frame-ms-max", type=int, default=40, help=argparse.SUPPRESS)
    parser.add_argument("--partials", action="store_true", help="ask for partial transcripts")
    parser.add_argument("--partial-interval", type=float, default=0.5, help="seconds between partials [%(default)s]")
    parser.add_argument("--min-silence-ms", type=int, default=300, help="the silence window [%(default)s]")
    parser.add_argument("--fade-last-word", type=float, metavar="DB", help="play each clip with its last word DB dB quieter (e.g. -20): a speaker trailing off")
    parser.add_argument("--model", default="tiny.en", help="model of the servers started and of the offline decode [%(default)s]")
    parser.add_argument("--url", help="measure a running whisperwire server instead of starting one (no CPU numbers)")
    parser.add_argument("--api-key", default=os.environ.get("WHISPERWIRE_API_KEY"), help="[$WHISPERWIRE_API_KEY]")
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for `whisperwire serve` (repeatable), e.g. --server-arg=--encoder-window=full")
    parser.add_argument("--whisperlive-python", help="python of an environment with whisper-live: also measure WhisperLive")
    parser.add_argument("--only-whisperlive", action="store_true", help="measure WhisperLive alone")
    parser.add_argument("--no-offline", action="store_true", help="skip the offline WER baseline")
    parser.add_argument("--seed", type=int, default=1, help="frame sizes and start times [%(default)s]")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every number here")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="draw the latency CDFs and the capacity curve here")


def run_bench(args: argparse.Namespace) -> int:
    _require_extra()
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from whisperwire.audiofile import decode_file
    from whisperwire.vad import SileroVAD

    console = Console(stderr=True)
    streams = [int(n) for n in str(args.streams).split(",") if n.strip()]
    if not streams or min(streams) < 1:
        console.print("error: --streams takes positive counts, e.g. 1,4,16")
        return 2
    if not args.manifest.exists():
        console.print(f"error: no manifest at {args.manifest}")
        return 2
    clips = read_manifest(args.manifest, "en", args.clip)
    if not clips:
        console.print(f"error: no English clips with references in {args.manifest}" + (f" matching {args.clip}" if args.clip else ""))
        return 2
    systems = [] if args.only_whisperlive else ["whisperwire"]
    if args.whisperlive_python:
        systems.append("whisperlive")
    if not systems:
        console.print("error: --only-whisperlive needs --whisperlive-python")
        return 2
    audio = {c.file: np.frombuffer(decode_file(c.path, SAMPLE_RATE), dtype="<i2") for c in clips}
    if args.fade_last_word is not None:
        audio = fade_last_words(audio, offline_transcripts(clips, args.model, audio), args.fade_last_word)
    vad = SileroVAD()
    runs: list[RunResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s audio"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        for n in streams:  # the systems alternate at each N: the machine's background load hits both alike
            for system in systems:
                runs.append(run_once(system, n, clips, args, vad, audio, progress))
    offline = None if args.no_offline else offline_transcripts(clips, args.model, audio)
    summaries = [summarise(run, offline) for run in runs]
    print_table(summaries, Console(width=max(Console().width, 180)))
    if args.json:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("api_key", "run")}
        payload = {
            "config": config,
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
            "runs": [
                {"summary": s, "streams": [asdict(score) for score in run.stream_scores]} for s, run in zip(summaries, runs)
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if args.plot:
        plot(runs, summaries, args.plot)
    failed = any(s["errors"] for s in summaries)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="whisperwire bench",
        description="Measure final latency, partial cadence, WER and capacity with N live streams (BENCHMARKS.md).",
    )
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
