"""Soak: N live streams for a long time; every utterance gets exactly one final, RSS stays flat.

Starts `whisperwire serve` (tiny.en) on a free loopback port, then runs N streams at once. Each
stream plays the short English shared clips in turn, 2 s of silence after each, in 20 ms frames
paced in real time, partials on; after `--session-clips` clips it terminates the session, waits
for its last finals and opens a new one, so both long sessions and many sessions are covered.
The server's RSS (from /proc) is sampled every few seconds.

Checks, per stream:
- every clip got at least one final inside its stretch of the stream (no final lost),
- no transcription_num got two finals (none duplicated), finals came in number order, and every
  number seen in a partial got its final,
- no error message and every session closed with 1000,
and for the server: RSS at the end within `--rss-margin-mb` of RSS after the first quarter
(flat once warm).

    python benchmarks/soak.py --streams 4 --minutes 30      # the long run (docs/serving.md)
    python benchmarks/soak.py --streams 2 --seconds 25      # the CI smoke (tests/test_soak.py)

Prints one line per minute and a JSON report (`--json PATH` writes it too); exit status 0 when
every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whisperwire.client import ServerError, SessionClosed, connect
from whisperwire.values import SAMPLE_RATE as RATE

AUDIO_DIR = Path(os.environ.get("WHISPERWIRE_AUDIO_DIR", Path(__file__).resolve().parents[2] / "shared" / "audio"))
# Short English clips with a clear end: each is followed by enough silence to end its speech.
PLAYLIST = [
    "en_timit_LDC93S1.wav",
    "en_harvard_birch_canoe.wav",
    "en_librispeech_1221-135766-0002.wav",
    "en_pocketsphinx_go_forward.wav",
    "en_new_home_in_the_stars.wav",
    "en_librispeech_1089-134686-0001.wav",
    "en_ljspeech_LJ001-0007.wav",
    "en_jfk_inaugural_11s.wav",
]
FRAME_BYTES = RATE * 2 * 20 // 1000
GAP_S = 2.0
FINALS_WAIT_S = 300.0
METADATA = {"streaming_params": {"enable_partial_transcripts": True, "partial_transcript_interval_s": 1.0}}


@dataclass
class StreamReport:
    sessions: int = 0
    clips: int = 0
    finals: int = 0
    partials: int = 0
    audio_s: float = 0.0
    problems: list[str] = field(default_factory=list)


def load_clips() -> dict[str, bytes]:
    with open(AUDIO_DIR / "manifest.tsv", newline="", encoding="utf-8") as handle:
        known = {row["file"] for row in csv.DictReader(handle, delimiter="\t")}
    clips = {}
    for name in PLAYLIST:
        if name not in known:
            raise SystemExit(f"{name} is not in {AUDIO_DIR}/manifest.tsv")
        with wave.open(str(AUDIO_DIR / name)) as wav:
            clips[name] = wav.readframes(wav.getnframes())
    return clips


async def run_session(url: str, clips: list[tuple[str, bytes]], report: StreamReport, deadline: float) -> None:
    """One session: play clips until they or the time run out, then terminate and check."""
    spans: list[tuple[str, float, float]] = []  # clip, start s, end of its silence s
    messages: list[Any] = []
    silence = b"\x00" * int(GAP_S * RATE * 2)
    async with connect(url, metadata=METADATA) as stream:

        async def receive() -> None:
            async for message in stream:
                messages.append(message)

        receiver = asyncio.create_task(receive())
        sent = 0
        started = time.monotonic()
        for name, pcm in clips:
            if time.monotonic() >= deadline:
                break
            begin = sent / (2 * RATE)
            for chunk in (pcm, silence):
                for offset in range(0, len(chunk), FRAME_BYTES):
                    await stream.send(chunk[offset : offset + FRAME_BYTES])
                    sent += len(chunk[offset : offset + FRAME_BYTES])
                    lag = started + sent / (2 * RATE) - time.monotonic()
                    if lag > 0:
                        await asyncio.sleep(lag)
            spans.append((name, begin, sent / (2 * RATE)))
        await stream.close()
        try:
            await asyncio.wait_for(receiver, FINALS_WAIT_S)
        except TimeoutError:
            # Late, not necessarily lost: the server is behind real time (see mean latency).
            report.problems.append(f"finals still missing {FINALS_WAIT_S:g} s after terminate")
            report.sessions += 1
            return
        code = stream.close_code
    report.sessions += 1
    report.clips += len(spans)
    report.audio_s += sent / (2 * RATE)
    _check(messages, spans, code, report)


def _check(messages: list[Any], spans: list[tuple[str, float, float]], code: int | None, report: StreamReport) -> None:
    finals = [m for m in messages if m.is_final]
    partial_nums = {m.transcription_num for m in messages if not m.is_final}
    report.finals += len(finals)
    report.partials += len(messages) - len(finals)
    nums = [m.transcription_num for m in finals]
    if len(nums) != len(set(nums)):
        report.problems.append(f"duplicated finals: {sorted(n for n in nums if nums.count(n) > 1)}")
    if nums != sorted(nums):
        report.problems.append(f"finals out of order: {nums}")
    if missing := partial_nums - set(nums):
        report.problems.append(f"partials without a final: {sorted(missing)}")
    for name, begin, end in spans:
        inside = [m for m in finals if m.segments and begin - 0.1 <= m.segments[0].start_time < end]
        if not any(m.transcript for m in inside):
            report.problems.append(f"no final for {name} at {begin:.1f}-{end:.1f} s")
    if code != 1000:
        report.problems.append(f"session closed with {code}")


async def run_stream(url: str, clips: dict[str, bytes], index: int, per_session: int, deadline: float) -> StreamReport:
    report = StreamReport()
    order = list(clips.items())
    position = index * 3  # streams start at different clips
    while time.monotonic() < deadline:
        chosen = [order[(position + i) % len(order)] for i in range(per_session)]
        position += per_session
        try:
            await run_session(url, chosen, report, deadline)
        except (ServerError, SessionClosed) as exc:
            report.problems.append(f"session failed: {exc!r}")
    return report


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def sample_rss(pid: int, samples: list[tuple[float, float]], every: float, started: float) -> None:
    while True:
        samples.append((time.monotonic() - started, rss_mb(pid)))
        minute = int(samples[-1][0] // 60)
        if len(samples) > 1 and int(samples[-2][0] // 60) != minute:
            print(f"  {minute:3d} min  server RSS {samples[-1][1]:.0f} MB", flush=True)
        await asyncio.sleep(every)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "whisperwire.cli", "serve", "--port", str(port), "--no-access-log"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve exited early; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1):
                return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("serve did not become ready")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    values = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def rss_verdict(samples: list[tuple[float, float]], margin_mb: float) -> dict[str, Any]:
    values = [rss for _, rss in samples]
    quarter = max(1, len(values) // 4)
    warm = statistics.median(values[quarter - 1 : quarter + 2])
    end = statistics.median(values[-3:])
    return {
        "start_mb": round(values[0], 1),
        "warm_mb": round(warm, 1),
        "end_mb": round(end, 1),
        "max_mb": round(max(values), 1),
        "growth_after_warm_mb": round(end - warm, 1),
        "flat": end - warm <= margin_mb,
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    clips = load_clips()
    port = free_port()
    log = Path(args.server_log)
    server = start_server(port, log)
    url = f"ws://127.0.0.1:{port}/v1/websocket"
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    deadline = started + args.seconds
    sampler = asyncio.create_task(sample_rss(server.pid, samples, args.rss_every, started))
    try:
        reports = await asyncio.gather(
            *(run_stream(url, clips, i, args.session_clips, deadline) for i in range(args.streams))
        )
        metrics = scrape(port)
    finally:
        sampler.cancel()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    elapsed = time.monotonic() - started
    finals_metric = metrics.get("whisperwire_utterances_finalised_total", 0.0)
    latency_count = metrics.get("whisperwire_final_latency_seconds_count", 0.0)
    result = {
        "streams": args.streams,
        "seconds": round(elapsed, 1),
        "sessions": sum(r.sessions for r in reports),
        "clips": sum(r.clips for r in reports),
        "finals": sum(r.finals for r in reports),
        "partials": sum(r.partials for r in reports),
        "audio_s": round(sum(r.audio_s for r in reports), 1),
        "server_finals_metric": finals_metric,
        "mean_final_latency_s": round(metrics.get("whisperwire_final_latency_seconds_sum", 0.0) / latency_count, 3)
        if latency_count
        else None,
        "partials_skipped": {
            reason: metrics.get(f'whisperwire_partials_skipped_total{{reason="{reason}"}}', 0.0)
            for reason in ("superseded", "slow_client")
        },
        "rss": rss_verdict(samples, args.rss_margin_mb),
        "problems": [p for r in reports for p in r.problems],
        "server_exit": server.returncode,
    }
    if finals_metric != result["finals"]:
        result["problems"].append(f"server counted {finals_metric:g} finals, clients got {result['finals']}")
    if not result["rss"]["flat"]:
        result["problems"].append(f"RSS grew {result['rss']['growth_after_warm_mb']} MB after warm-up")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float)
    length.add_argument("--seconds", type=float)
    parser.add_argument("--session-clips", type=int, default=len(PLAYLIST), help="clips per session [%(default)s]")
    parser.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--rss-margin-mb", type=float, default=40.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--server-log", default="soak-server.log")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    args.seconds = args.seconds if args.seconds is not None else 60 * (args.minutes or 30)
    print(f"soak: {args.streams} streams for {args.seconds:g} s", flush=True)
    result = asyncio.run(soak(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
