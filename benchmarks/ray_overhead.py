"""Ray Serve against one process on the same machine: latency added per final, and throughput.

Each deployment is started here in turn — `whisperwire serve`, then `whisperwire serve --ray` (a
one-machine Ray cluster with one ingress and one recognizer replica) — and measured alike:

- final latency: benchmarks/stream_eval.py's measurement (arrival of an utterance's final minus
  the wall time its last speech sample was sent), the clips streamed one at a time in real time;
- throughput: --streams clients at once, each sending every clip back to back (1.5 s of silence
  between) as fast as it can; audio seconds recognised per wall second, until the last final;
- CPU seconds of each process during the throughput run, by role (the Ray replicas, the proxy,
  the rest of Ray), from /proc: the per-replica cost for capacity planning.

--rounds repeats the pair (process, ray, process, ray, ...) so a neighbour's load falls on both.

    python benchmarks/ray_overhead.py                          # tiny.en, English clips
    python benchmarks/ray_overhead.py --streams 8 --rounds 2 --json out.json
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

from whisperwire.client import connect, decode_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stream_eval  # noqa: E402 - a sibling script, not a package

SAMPLE_RATE = 16_000
GAP = bytes(int(1.5 * SAMPLE_RATE) * 2)
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


# --------------------------------------------------------------------------- one deployment


def measure(deployment: str, args: argparse.Namespace, clips: list[stream_eval.Clip], pcm: bytes) -> dict[str, Any]:
    server = stream_eval.LocalServer(args.model, DEPLOYMENTS[deployment])
    began = time.monotonic()
    server.start(timeout_s=900)
    started_s = time.monotonic() - began
    assert server.process is not None
    try:
        eval_args = stream_eval.parse_args(["--model", args.model, "--no-offline"])
        results = asyncio.run(stream_eval.stream_all(clips, eval_args, server.url))
        latency = stream_eval.summarise(results, "en")["final_latency_s"]
        cpu_before = cpu_by_role(server.process.pid)
        wall, finals = asyncio.run(throughput(server.url, pcm, args.streams))
        cpu_after = cpu_by_role(server.process.pid)
    finally:
        server.stop()
    audio_s = len(pcm) / 2 / SAMPLE_RATE * args.streams
    return {
        "deployment": deployment,
        "start_s": started_s,
        "final_latency_s": latency,
        "throughput_wall_s": wall,
        "throughput_audio_s_per_s": audio_s / wall,
        "throughput_finals": finals,
        "cpu_s_by_role": {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after},
        "audio_s": audio_s,
        "failed_clips": [r.file for r in results if r.error],
    }


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n{args.model}; latency: clips one at a time, real time; throughput: {args.streams} streams at once, as fast as possible")
    print(f"{'deployment':<10} {'start s':>8} {'lat p50':>8} {'lat p95':>8} {'lat max':>8} {'audio s/s':>10} {'finals':>7}")
    for run in runs:
        lat = run["final_latency_s"]
        print(
            f"{run['deployment']:<10} {run['start_s']:8.1f} {lat['p50']:8.2f} {lat['p95']:8.2f} {lat['max']:8.2f} "
            f"{run['throughput_audio_s_per_s']:10.2f} {run['throughput_finals']:7d}"
        )
    for run in runs:
        cpu = run["cpu_s_by_role"]
        shares = ", ".join(f"{role} {seconds / run['audio_s']:.3f}" for role, seconds in sorted(cpu.items()))
        print(f"  {run['deployment']} CPU s per audio s during throughput: {shares}")
    by = {name: [r for r in runs if r["deployment"] == name] for name in DEPLOYMENTS}
    if all(by.values()):
        p50 = {n: statistics.median(r["final_latency_s"]["p50"] for r in rs) for n, rs in by.items()}
        rate = {n: statistics.median(r["throughput_audio_s_per_s"] for r in rs) for n, rs in by.items()}
        print(
            f"\nRay vs one process (medians over rounds): final latency p50 {p50['ray'] - p50['process']:+.2f} s "
            f"({p50['process']:.2f} -> {p50['ray']:.2f}); throughput x{rate['ray'] / rate['process']:.2f} "
            f"({rate['process']:.2f} -> {rate['ray']:.2f} audio s/s)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--manifest", type=Path, default=stream_eval.DEFAULT_MANIFEST)
    parser.add_argument(
        "--clip",
        action="append",
        help="only clips whose file name contains this (repeatable) [four short English clips]",
    )
    parser.add_argument("--streams", type=int, default=4, help="sessions at once in the throughput run [%(default)s]")
    parser.add_argument("--rounds", type=int, default=1, help="times to measure each deployment [%(default)s]")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()

    wanted = args.clip or ["LDC93S1", "birch_canoe", "1089-134686-0001", "jfk_inaugural"]
    clips = [c for c in stream_eval.read_manifest(args.manifest, "en") if any(w in c.file for w in wanted)]
    pcm = GAP.join(decode_file(c.path, SAMPLE_RATE) for c in clips) + GAP
    runs = [measure(name, args, clips, pcm) for _ in range(args.rounds) for name in DEPLOYMENTS]
    report(runs, args)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "streams": args.streams, "runs": runs}, indent=2))
    return 1 if any(r["failed_clips"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
