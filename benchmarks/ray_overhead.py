"""Ray Serve against one process on the same machine: latency added per final, and throughput.

Both deployments run at once, started here — `whisperwire serve`, and `whisperwire serve --ray`
(a one-machine Ray cluster with one ingress and one recognizer replica) — and are measured in
alternation, so that load from elsewhere on the machine falls on both alike:

- final latency: `whisperwire bench`'s measurement (arrival of an utterance's final minus the
  wall time its last speech sample was sent, speech found offline by Silero), each clip streamed
  in real time to one deployment, then the other; the added latency is the median of the
  per-utterance differences;
- throughput: --streams clients at once, each sending every clip back to back (1.5 s of silence
  between) as fast as it can, to one deployment while the other idles; audio seconds
  recognised per wall second, until the last final;
- CPU seconds of each process during its throughput run, by role (the Ray replicas, the proxy,
  the rest of Ray), from /proc: the per-replica cost for capacity planning.

    python benchmarks/ray_overhead.py                          # tiny.en, four English clips
    python benchmarks/ray_overhead.py --streams 8 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import bench  # benchmarks/bench.py, beside this script
from whisperwire.audiofile import decode_file
from whisperwire.client import connect
from whisperwire.vad import SileroVAD
from whisperwire.values import SAMPLE_RATE

GAP = bytes(int(1.5 * SAMPLE_RATE) * 2)
MIN_SILENCE_MS = 300
DEPLOYMENTS = {"process": (), "ray": ("--ray",)}


# --------------------------------------------------------------------------- CPU by process


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command line, CPU seconds) of every process we may read."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), command, (int(fields[11]) + int(fields[12])) / tick)
    return found


def _role(command: str) -> str:
    for marker, role in (("Ingress", "ingress"), ("Recognizer", "recognizer"), ("ProxyActor", "proxy")):
        if marker in command and "ray::" in command:
            return role
    return "server" if "whisperwire.cli serve" in command else "ray (gcs, raylet, controller, ...)"


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds of ``root`` and all its descendants, summed by role."""
    processes = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    totals: dict[str, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in processes:
            role = _role(processes[pid][1])
            totals[role] = totals.get(role, 0.0) + processes[pid][2]
        todo += children.get(pid, [])
    return totals


# --------------------------------------------------------------------------- throughput


async def _one_stream(url: str, pcm: bytes) -> int:
    finals = 0
    async with connect(url, metadata={"streaming_vad_config": {"min_silence_duration_ms": 300}}) as stream:
        await stream.send(pcm)
        await stream.close()  # terminate: every final still comes
        async for message in stream:
            finals += message.is_final
    return finals


async def throughput(url: str, pcm: bytes, streams: int) -> tuple[float, int]:
    """Wall seconds for ``streams`` sessions of ``pcm`` at once, and the finals they got."""
    began = time.monotonic()
    finals = await asyncio.gather(*(_one_stream(url, pcm) for _ in range(streams)))
    return time.monotonic() - began, sum(finals)


# --------------------------------------------------------------------------- both deployments


def latencies(url: str, programme: bench.Programme, seed: int) -> list[float | None]:
    """Final latency of each speech region of ``programme`` (None: no final), streamed in real time."""
    log = bench.StreamLog()
    driver = bench.WhisperwireDriver(url, None, {"streaming_vad_config": {"min_silence_duration_ms": MIN_SILENCE_MS}})
    asyncio.run(driver.play(programme, log, bench.Pacer(seed, 1.0, (20, 40), lambda _: None)))
    score = bench.score_stream(programme, log, partials_expected=False)
    if score.error:
        raise RuntimeError(score.error)
    return [u.final_latency_s for u in score.utterances]


def throughput_run(server: bench.WhisperwireServer, pcm: bytes, streams: int) -> dict[str, Any]:
    assert server.process is not None
    before = cpu_by_role(server.process.pid)
    wall, finals = asyncio.run(throughput(server.url, pcm, streams))
    after = cpu_by_role(server.process.pid)
    audio_s = len(pcm) / 2 / SAMPLE_RATE * streams
    return {
        "wall_s": wall,
        "audio_s_per_s": audio_s / wall,
        "finals": finals,
        "cpu_s_per_audio_s": {role: (after[role] - before.get(role, 0.0)) / audio_s for role in after},
    }


def measure(args: argparse.Namespace, clips: list[bench.Clip], pcm: bytes) -> dict[str, Any]:
    audio = {c.file: np.frombuffer(decode_file(c.path, SAMPLE_RATE), dtype="<i2") for c in clips}
    vad = SileroVAD()
    programmes = [bench.build_programme([clip], 0, 1.5, None, vad, MIN_SILENCE_MS, audio) for clip in clips]
    runs: dict[str, Any] = {"start_s": {}, "latency_pairs": [], "throughput": {name: [] for name in DEPLOYMENTS}}
    servers: dict[str, bench.WhisperwireServer] = {}
    try:
        for name, flags in DEPLOYMENTS.items():
            began = time.monotonic()
            servers[name] = bench.WhisperwireServer(args.model, flags)
            servers[name].wait_ready(timeout_s=900)
            runs["start_s"][name] = time.monotonic() - began
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for clip, programme in zip(clips, programmes):
                pair = {name: latencies(servers[name].url, programme, round_) for name in order}
                runs["latency_pairs"] += [
                    {"clip": clip.file, "process": p, "ray": r} for p, r in zip(pair["process"], pair["ray"])
                ]
            for name in order:
                runs["throughput"][name].append(throughput_run(servers[name], pcm, args.streams))
    finally:
        for server in servers.values():
            server.stop()
    return runs


def report(runs: dict[str, Any], args: argparse.Namespace) -> None:
    pairs = [p for p in runs["latency_pairs"] if p["process"] is not None and p["ray"] is not None]
    added = [p["ray"] - p["process"] for p in pairs]
    print(f"\n{args.model}; started in: " + ", ".join(f"{n} {s:.0f} s" for n, s in runs["start_s"].items()))
    for name in DEPLOYMENTS:
        values = [p[name] for p in pairs]
        print(f"final latency {name:<8} n={len(values)} p50 {statistics.median(values):.2f} s  max {max(values):.2f} s")
    print(
        f"latency added by Ray per final (paired): median {statistics.median(added):+.3f} s, "
        f"quartiles {np.percentile(added, 25):+.3f} .. {np.percentile(added, 75):+.3f} s"
    )
    for name in DEPLOYMENTS:
        for run in runs["throughput"][name]:
            shares = ", ".join(f"{role} {v:.3f}" for role, v in sorted(run["cpu_s_per_audio_s"].items()))
            print(
                f"throughput {name:<8} {args.streams} streams: {run['audio_s_per_s']:.2f} audio s/s, "
                f"{run['finals']} finals; CPU s per audio s: {shares}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--manifest", type=Path, default=bench.DEFAULT_MANIFEST)
    parser.add_argument(
        "--clip",
        action="append",
        help="only clips whose file name contains this (repeatable) [four short English clips]",
    )
    parser.add_argument("--streams", type=int, default=4, help="sessions at once in the throughput run [%(default)s]")
    parser.add_argument("--rounds", type=int, default=2, help="times to measure each deployment [%(default)s]")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()

    wanted = args.clip or ["LDC93S1", "birch_canoe", "1089-134686-0001", "jfk_inaugural"]
    clips = bench.read_manifest(args.manifest, "en", wanted)
    pcm = GAP.join(decode_file(c.path, SAMPLE_RATE) for c in clips) + GAP
    runs = measure(args, clips, pcm)
    report(runs, args)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "streams": args.streams, **runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
