"""Streaming quality and latency of a whisperwire server on the shared clips.

Each clip of one language is streamed alone, paced like a live source, followed by 1.5 s of
digital silence and a terminate. Measured:

- final latency: arrival of an utterance's final minus the wall time its last speech sample was
  sent. Speech ends come from the clip itself, never from server-reported times: Silero VAD is
  run offline over the exact samples sent, with the server's rule (speech starts at p >= 0.5 and
  ends after min-silence of windows under 0.35). A final belongs to the speech region its
  segments overlap most. The floor is min-silence: the server cannot know speech ended sooner.
- time to first partial after speech start, and partial cadence (with --partials);
- WER per clip and corpus-level, streaming (finals joined) vs offline (whole clip decoded once);
- the server's CPU seconds while streaming (when this script started it).

    python benchmarks/stream_eval.py                      # own tiny.en server, English, real time
    python benchmarks/stream_eval.py --partials --json out.json
    python benchmarks/stream_eval.py --url ws://127.0.0.1:8000/v1/websocket
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from whisperwire.client import SessionClosed, WhisperwireError, connect, decode_file
from whisperwire.protocol import Segment, Transcription
from whisperwire.vad import WINDOW_SAMPLES, SileroVAD

sys.path.insert(0, str(Path(__file__).resolve().parent))
import offline_wer  # noqa: E402 - a sibling script, not a package
from offline_wer import error_rate  # noqa: E402

SAMPLE_RATE = 16_000
BYTES_PER_S = SAMPLE_RATE * 2  # pcm_s16le mono
TAIL_SILENCE_S = 1.5
VAD_THRESHOLD = 0.5
VAD_END_GAP = 0.15  # speech ends under threshold - 0.15 (PROTOCOL.md §3)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPO.parent / "shared" / "audio" / "manifest.tsv"


# --------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class Clip:
    file: str
    path: Path
    duration_s: float
    language: str
    reference: str


def read_manifest(path: Path, language: str) -> list[Clip]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [
        Clip(
            row["file"],
            path.parent / row["file"],
            float(row["duration_s"]),
            row["language"],
            row["reference_transcript"],
        )
        for row in rows
        if row["language"] == language and row["reference_transcript"].strip()
    ]


# --------------------------------------------------------------------------- offline VAD


@dataclass(frozen=True)
class Region:
    """Speech found offline, in samples: [start, end), end one past the last speech sample."""

    start: int
    end: int


def speech_regions(audio: np.ndarray, vad: SileroVAD, min_silence_ms: int) -> list[Region]:
    """The server's end-of-speech rule, applied to the whole stream at once.

    Only whole windows are scored, as the server does. The server's forced cut at
    final_transcript_max_duration_s is not mirrored: it is no end of speech.
    """
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


# --------------------------------------------------------------------------- streaming


@dataclass
class StreamRun:
    frame_samples: int
    sent: list[float] = field(default_factory=list)  # monotonic time each frame left
    lag: list[float] = field(default_factory=list)  # how late each frame left vs its due time
    messages: list[tuple[float, Transcription]] = field(default_factory=list)

    def sent_at(self, sample: int) -> float:
        """Wall time the frame holding `sample` was sent."""
        return self.sent[min(sample // self.frame_samples, len(self.sent) - 1)]


async def _send_paced(stream: Any, pcm: bytes, run: StreamRun, speed: float) -> None:
    frame_bytes = run.frame_samples * 2
    start = time.monotonic()
    for offset in range(0, len(pcm), frame_bytes):
        frame = pcm[offset : offset + frame_bytes]
        # A live source has a frame once its last sample exists; deadlines from the clock, so
        # pacing does not drift with sleep overshoot.
        due = start + (offset + len(frame)) / BYTES_PER_S / speed if speed > 0 else time.monotonic()
        delay = due - time.monotonic()
        await asyncio.sleep(max(0.0, delay))
        await stream.send(frame)
        now = time.monotonic()
        run.sent.append(now)
        run.lag.append(now - due)
    await stream.close()


async def _receive(stream: Any, run: StreamRun) -> None:
    async for message in stream:
        run.messages.append((time.monotonic(), message))


async def stream_clip(
    url: str, api_key: str | None, pcm: bytes, metadata: dict[str, Any], speed: float, frame_ms: float
) -> StreamRun:
    run = StreamRun(frame_samples=max(1, round(SAMPLE_RATE * frame_ms / 1000)))
    async with connect(url, api_key=api_key, metadata=metadata) as stream:
        sender = asyncio.create_task(_send_paced(stream, pcm, run, speed))
        receiver = asyncio.create_task(_receive(stream, run))
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_EXCEPTION)
            failure = sender.exception() if sender.done() else None
            # SessionClosed while sending: the receiver has the server's reason.
            if failure is not None and not isinstance(failure, SessionClosed):
                raise failure
            await receiver
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
    return run


def stream_metadata(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"encoding": "pcm_s16le", "sample_rate": SAMPLE_RATE}
    if args.partials:
        params["enable_partial_transcripts"] = True
        params["partial_transcript_interval_s"] = args.partial_interval
    return {
        # Sent explicitly: the offline rule must use the same values as the server.
        "streaming_vad_config": {
            "threshold": VAD_THRESHOLD,
            "min_silence_duration_ms": args.min_silence_ms,
        },
        "streaming_params": params,
        "whisper_params": {"audio_language": args.language},
    }


# --------------------------------------------------------------------------- scoring


@dataclass
class Utterance:
    speech_start_s: float
    speech_end_s: float
    transcription_nums: list[int]
    final_latency_s: float | None  # None: this speech got no final
    first_partial_s: float | None
    partial_gaps_s: list[float]


@dataclass
class ClipResult:
    file: str
    duration_s: float
    reference: str
    streaming_text: str = ""
    offline_text: str | None = None  # None: streaming-only
    wer_streaming: float | None = None
    wer_offline: float | None = None
    utterances: list[Utterance] = field(default_factory=list)
    finals: int = 0
    partials: int = 0
    cut_finals: int = 0  # extra finals of one speech region (forced cuts): no end of speech
    unmatched_finals: int = 0  # no segments to place them
    send_lag_max_s: float = 0.0
    error: str | None = None


def _overlap(segments: list[Segment], region: Region) -> float:
    lo, hi = region.start / SAMPLE_RATE, region.end / SAMPLE_RATE
    return sum(max(0.0, min(s.end_time, hi) - max(s.start_time, lo)) for s in segments)


def _gap(segments: list[Segment], region: Region) -> float:
    lo, hi = segments[0].start_time, segments[-1].end_time
    return max(region.start / SAMPLE_RATE - hi, lo - region.end / SAMPLE_RATE, 0.0)


def best_region(segments: list[Segment], regions: list[Region]) -> int | None:
    """Most overlap; with none (timestamps a little off), the nearest region."""
    if not segments or not regions:
        return None
    return max(range(len(regions)), key=lambda i: (_overlap(segments, regions[i]), -_gap(segments, regions[i])))


def _segments_by_num(messages: list[tuple[float, Transcription]]) -> dict[int, list[Segment]]:
    """The segments that place each utterance: its final's, else its last partial's."""
    placed = {m.transcription_num: list(m.segments) for _, m in messages if not m.is_final and m.segments}
    placed.update({m.transcription_num: list(m.segments) for _, m in messages if m.is_final and m.segments})
    return placed


def score_utterances(run: StreamRun, regions: list[Region], result: ClipResult) -> None:
    placed = _segments_by_num(run.messages)
    region_of = {num: best_region(segs, regions) for num, segs in placed.items()}
    finals = [(t, m) for t, m in run.messages if m.is_final]
    partials = [(t, m) for t, m in run.messages if not m.is_final]
    result.finals, result.partials = len(finals), len(partials)
    result.unmatched_finals = sum(1 for _, m in finals if region_of.get(m.transcription_num) is None)
    for index, region in enumerate(regions):
        nums = sorted(n for n, r in region_of.items() if r == index)
        mine = [t for t, m in finals if m.transcription_num in nums]
        result.cut_finals += max(0, len(mine) - 1)
        result.utterances.append(
            Utterance(
                speech_start_s=region.start / SAMPLE_RATE,
                speech_end_s=region.end / SAMPLE_RATE,
                transcription_nums=nums,
                final_latency_s=max(mine) - run.sent_at(region.end - 1) if mine else None,
                first_partial_s=_first_partial(partials, nums, run.sent_at(region.start)),
                partial_gaps_s=_partial_gaps(partials, nums),
            )
        )


def _first_partial(partials: list[tuple[float, Transcription]], nums: list[int], speech_sent: float) -> float | None:
    times = [t for t, m in partials if m.transcription_num in nums]
    return min(times) - speech_sent if times else None


def _partial_gaps(partials: list[tuple[float, Transcription]], nums: list[int]) -> list[float]:
    gaps: list[float] = []
    for num in nums:
        times = sorted(t for t, m in partials if m.transcription_num == num)
        gaps += list(np.diff(times)) if len(times) > 1 else []
    return [float(g) for g in gaps]


# --------------------------------------------------------------------------- offline baseline


def offline_transcripts(clips: list[Clip], manifest: Path, model: str, language: str) -> dict[str, str]:
    """Whole-clip decodes, the same way benchmarks/offline_wer.py decodes them."""
    from whisperwire.engine import DecodeOptions, load_engine

    engine = load_engine(model)
    options = DecodeOptions(language=language)
    theirs = {c.file: c for c in offline_wer.read_manifest(manifest, language)}
    return {
        c.file: offline_wer.score_clip(engine, theirs[c.file], manifest.parent, options).hypothesis
        for c in clips
        if c.file in theirs
    }


# --------------------------------------------------------------------------- local server


class LocalServer:
    """`whisperwire serve` in a subprocess on a free loopback port, stopped with SIGTERM."""

    def __init__(self, model: str, extra_args: tuple[str, ...] = ()) -> None:
        self.model = model
        self.extra_args = extra_args  # more `serve` flags, e.g. ("--ray",)
        self.port = _free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="stream_eval_server_", suffix=".log", delete=False)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/websocket"

    def start(self, timeout_s: float = 180.0) -> None:
        command = [sys.executable, "-m", "whisperwire.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--model", self.model, "--log-level", "warning", *self.extra_args]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start; log: {self.log.name}")
            time.sleep(0.25)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the server process (all its threads)."""
        if self.process is None:
            return None
        try:
            import psutil  # type: ignore[import-untyped]

            times = psutil.Process(self.process.pid).cpu_times()
            return float(times.user + times.system)
        except ImportError:
            pass
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # the name may hold spaces; fields follow ")"
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- the run


def pcm_to_float(pcm: bytes) -> np.ndarray:
    # The server's own pcm_s16le conversion, so offline VAD sees the very same samples.
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)


async def evaluate_clip(clip: Clip, args: argparse.Namespace, url: str, vad: SileroVAD) -> ClipResult:
    result = ClipResult(clip.file, clip.duration_s, clip.reference)
    pcm = decode_file(clip.path, SAMPLE_RATE) + bytes(int(TAIL_SILENCE_S * SAMPLE_RATE) * 2)
    regions = speech_regions(pcm_to_float(pcm), vad, args.min_silence_ms)
    try:
        run = await asyncio.wait_for(
            stream_clip(url, args.api_key, pcm, stream_metadata(args), args.speed, args.frame_ms),
            timeout=len(pcm) / BYTES_PER_S / max(args.speed, 0.05) + 120,
        )
    except (WhisperwireError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    finals = sorted((m for _, m in run.messages if m.is_final), key=lambda m: m.transcription_num)
    result.streaming_text = " ".join(m.transcript.strip() for m in finals if m.transcript.strip())
    result.send_lag_max_s = max(run.lag, default=0.0)
    score_utterances(run, regions, result)
    return result


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    array = np.asarray(values)
    return {
        "n": len(values),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "max": float(array.max()),
    }


def summarise(results: list[ClipResult], language: str) -> dict[str, Any]:
    utterances = [u for r in results for u in r.utterances]
    ok = [r for r in results if r.error is None]
    both = [r for r in ok if r.offline_text is not None]
    refs = [r.reference for r in ok]
    both_refs = [r.reference for r in both]
    return {
        "final_latency_s": percentiles([u.final_latency_s for u in utterances if u.final_latency_s is not None]),
        "speech_without_final": sum(u.final_latency_s is None for u in utterances),
        "cut_finals": sum(r.cut_finals for r in results),
        "unmatched_finals": sum(r.unmatched_finals for r in results),
        "first_partial_s": percentiles([u.first_partial_s for u in utterances if u.first_partial_s is not None]),
        "partial_gap_s": percentiles([g for u in utterances for g in u.partial_gaps_s]),
        "wer_streaming_all": error_rate(refs, [r.streaming_text for r in ok], language) if ok else None,
        # Streaming again on the clips that have an offline decode: the fair comparison.
        "wer_streaming_common": error_rate(both_refs, [r.streaming_text for r in both], language) if both else None,
        "wer_offline_common": error_rate(both_refs, [r.offline_text or "" for r in both], language) if both else None,
        "clips": len(results),
        "clips_failed": len(results) - len(ok),
        "clips_with_offline": len(both),
        "send_lag_max_s": max((r.send_lag_max_s for r in results), default=0.0),
    }


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def print_report(results: list[ClipResult], summary: dict[str, Any], extra: dict[str, Any]) -> None:
    heads = [("dur s", 6), ("utt", 3), ("fin", 3)] + [(h, 7) for h in ("lat p50", "lat max", "1st prt", "WER str", "WER off")]
    print(f"\n{'clip':<38} " + " ".join(f"{h:>{w}}" for h, w in heads))
    for r in results:
        lat = [u.final_latency_s for u in r.utterances if u.final_latency_s is not None]
        first = [u.first_partial_s for u in r.utterances if u.first_partial_s is not None]
        print(
            f"{r.file[:38]:<38} {r.duration_s:6.1f} {len(r.utterances):3d} {r.finals:3d} "
            f"{_fmt(float(np.median(lat)) if lat else None):>7} {_fmt(max(lat, default=None)):>7} "
            f"{_fmt(float(np.median(first)) if first else None):>7} "
            f"{_fmt(r.wer_streaming, '{:.1%}'):>7} {_fmt(r.wer_offline, '{:.1%}'):>7}"
            + (f"  ERROR {r.error}" if r.error else "")
        )
    print("\nfinal latency per utterance (s):")
    for r in results:
        lat = ["-" if u.final_latency_s is None else f"{u.final_latency_s:.2f}" for u in r.utterances]
        print(f"  {r.file[:38]:<38} {' '.join(lat)}")
    fl, fp, gap = summary["final_latency_s"], summary["first_partial_s"], summary["partial_gap_s"]
    print(
        f"\nfinal latency: n={fl['n']} p50 {_fmt(fl['p50'])} s  p95 {_fmt(fl['p95'])} s  max {_fmt(fl['max'])} s"
        f"  (floor: min-silence {extra['min_silence_ms'] / 1000:.2f} s)"
    )
    print(
        f"  speech regions without a final: {summary['speech_without_final']}; extra finals inside "
        f"one region (forced cuts): {summary['cut_finals']}; unplaced finals: {summary['unmatched_finals']}"
    )
    if extra["partials"]:
        print(
            f"first partial after speech start: n={fp['n']} p50 {_fmt(fp['p50'])} s  p95 {_fmt(fp['p95'])} s  "
            f"max {_fmt(fp['max'])} s;  partial gap: n={gap['n']} median {_fmt(gap['p50'])} s  p95 {_fmt(gap['p95'])} s"
        )
    print(
        f"corpus WER: streaming {_fmt(summary['wer_streaming_all'], '{:.1%}')} "
        f"({summary['clips'] - summary['clips_failed']} clips); "
        f"on the {summary['clips_with_offline']} clips with an offline decode: streaming "
        f"{_fmt(summary['wer_streaming_common'], '{:.1%}')} vs offline {_fmt(summary['wer_offline_common'], '{:.1%}')}"
    )
    cpu = extra.get("server_cpu_s")
    if cpu is not None:
        print(
            f"server CPU while streaming: {cpu:.1f} s over {extra['stream_wall_s']:.1f} s wall "
            f"({cpu / extra['stream_wall_s']:.2f} cores; {cpu / extra['audio_s']:.3f} CPU s per audio s)"
        )
    print(f"client send lag max {summary['send_lag_max_s'] * 1000:.0f} ms; total run {extra['run_wall_s']:.1f} s")


async def stream_all(clips: list[Clip], args: argparse.Namespace, url: str) -> list[ClipResult]:
    vad = SileroVAD()
    results = []
    for clip in clips:  # one stream at a time: latency without competing sessions
        result = await evaluate_clip(clip, args, url, vad)
        failure = f", {result.error}" if result.error else ""
        print(f"  {clip.file}: {result.finals} finals, {result.partials} partials{failure}", flush=True)
        results.append(result)
    return results


def add_wer(results: list[ClipResult], offline: dict[str, str], language: str) -> None:
    for r in results:
        if r.error is None:
            r.wer_streaming = error_rate([r.reference], [r.streaming_text], language)
        r.offline_text = offline.get(r.file)
        if r.offline_text is not None:
            r.wer_offline = error_rate([r.reference], [r.offline_text], language)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    clips = read_manifest(args.manifest, args.language)
    clips = [c for c in clips if not args.clip or any(part in c.file for part in args.clip)]
    if not clips:
        print(f"no clips with language {args.language!r} in {args.manifest}", file=sys.stderr)
        return 1
    server = None if args.url else LocalServer(args.model)
    extra: dict[str, Any] = {"min_silence_ms": args.min_silence_ms, "partials": args.partials}
    try:
        if server is not None:
            server.start()
            print(f"server {server.url} (model {args.model}), log {server.log.name}", flush=True)
        url = args.url or (server.url if server else "")
        cpu_before = server.cpu_seconds() if server else None
        stream_started = time.monotonic()
        results = asyncio.run(stream_all(clips, args, url))
        extra["stream_wall_s"] = time.monotonic() - stream_started
        cpu_after = server.cpu_seconds() if server else None
        if cpu_before is not None and cpu_after is not None:
            extra["server_cpu_s"] = cpu_after - cpu_before
    finally:
        if server is not None:
            server.stop()
    # After the server stops, so offline decoding does not compete with it for the cores.
    offline = {} if args.no_offline else offline_transcripts(clips, args.manifest, args.model, args.language)
    add_wer(results, offline, args.language)
    summary = summarise(results, args.language)
    extra["audio_s"] = sum(c.duration_s + TAIL_SILENCE_S for c in clips)
    extra["run_wall_s"] = time.monotonic() - started
    print_report(results, summary, extra)
    if args.json:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "api_key"}
        payload = {"config": config, "summary": summary, "run": extra, "clips": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2))
    return 1 if summary["clips_failed"] else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", help="WebSocket endpoint of a running server [start one]")
    parser.add_argument("--api-key", default=os.environ.get("WHISPERWIRE_API_KEY"), help="[$WHISPERWIRE_API_KEY]")
    parser.add_argument("--model", default="tiny.en", help="model of the server started, and of the offline decode")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--language", default="en", help="manifest language to stream")
    parser.add_argument("--clip", action="append", help="only clips whose file name contains this (repeatable)")
    parser.add_argument("--speed", type=float, default=1.0, help="multiple of real time; 0: as fast as possible")
    parser.add_argument("--frame-ms", type=float, default=20.0)
    parser.add_argument("--partials", action="store_true", help="ask for partial transcripts")
    parser.add_argument("--partial-interval", type=float, default=None, help="seconds (implies --partials) [0.5]")
    parser.add_argument("--min-silence-ms", type=int, default=300)
    parser.add_argument("--no-offline", action="store_true", help="skip the offline WER baseline")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every number here")
    args = parser.parse_args(argv)
    if args.partial_interval is not None:
        args.partials = True
    elif args.partials:
        args.partial_interval = 0.5
    if args.speed < 0 or args.frame_ms <= 0:
        parser.error("--speed must be >= 0 and --frame-ms > 0")
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args()))
