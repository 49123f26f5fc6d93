"""Transcript quality through a real server on loopback: text on non-speech, streaming against
offline word error rate, and long speech cut at final_transcript_max_duration_s.

    python benchmarks/transcript_quality.py                    # all three, tiny.en
    python benchmarks/transcript_quality.py nonspeech --threshold 0.3
    python benchmarks/transcript_quality.py speech --context-prompt
    python benchmarks/transcript_quality.py monologue

nonspeech: generated signals (tests/nonspeech.py, 30 s each), the shared non-speech clips, the
laughter clip cut at ten offsets and two gains, and the stretches of the shared speech clips
where nobody speaks. Reports how many utterances the VAD passed to Whisper and how many finals
carried text (each one a false final), per minute of audio.

speech: each English clip streamed with the default metadata (utterances split at 300 ms of
silence), its finals joined, against the same clip transcribed whole (offline, as
offline_wer.py). Corpus-level WER after Whisper's English normaliser.

monologue: the English clips joined without pauses (in manifest order, then in shuffled orders),
streamed with min_silence_duration_ms 10000 (so only the 30 s limit cuts it; the manifest order
with the default 300 ms too), against faster-whisper's own sequential 30 s windowing of the whole
recording (engine.transcribe on it, as offline).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps
from whisper_normalizer.english import EnglishTextNormalizer

# tests/ holds the signal generators, the WAV reader and the streaming client the tests use.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import nonspeech  # noqa: E402
from tests.conftest import AUDIO_DIR, read_wav, start_server  # noqa: E402
from tests.streaming import s16le, stream  # noqa: E402
from whisperwire.engine import DecodeOptions, WhisperEngine, load_engine  # noqa: E402
from whisperwire.vad import SileroVAD  # noqa: E402
from whisperwire.values import SAMPLE_RATE as RATE  # noqa: E402

_normalise = EnglishTextNormalizer()


@dataclass(frozen=True)
class Piece:
    name: str
    audio: np.ndarray


def english_clips() -> list[tuple[str, str]]:
    """(file, reference) of the English speech clips, without the padded copy of JFK."""
    with open(AUDIO_DIR / "manifest.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [
        (row["file"], row["reference_transcript"])
        for row in rows
        if row["language"] == "en" and row["transcript_status"] != "exact_constructed"
    ]


def nonspeech_set(seconds: float) -> list[Piece]:
    pieces = [Piece(name, nonspeech.generate(name, seconds, seed)) for seed, name in enumerate(nonspeech.GENERATED)]
    pieces += [Piece(name, read_wav(AUDIO_DIR / name)) for name in nonspeech.NON_SPEECH_CLIPS]
    laughter = read_wav(AUDIO_DIR / "none_laughter_4s.wav")
    for offset in np.arange(0.0, 1.0, 0.1):
        for gain in (1.0, 2.0):
            cut = np.clip(laughter[int(offset * RATE) :] * gain, -1, 1)
            pieces.append(Piece(f"laughter from {offset:.1f} s x{gain:g}", cut))
    for name, _ in english_clips():
        audio = read_wav(AUDIO_DIR / name)
        regions = get_speech_timestamps(audio, VadOptions(threshold=0.3, min_silence_duration_ms=100, speech_pad_ms=0))
        gaps = nonspeech.speech_free_parts(audio, [(r["start"], r["end"]) for r in regions])
        if gaps:
            pieces.append(Piece(f"pauses of {name}", np.concatenate(gaps)))
    return pieces


def wer(references: list[str], hypotheses: list[str]) -> float:
    return jiwer.wer([_normalise(r) for r in references], [_normalise(h) or "<empty>" for h in hypotheses])


async def run_nonspeech(url: str, stats, args: argparse.Namespace) -> None:  # noqa: ANN001
    pieces = nonspeech_set(args.seconds)
    metadata = {"streaming_vad_config": {"threshold": args.threshold}}
    total_s = utterances = 0.0
    false_finals: list[tuple[str, str]] = []
    for piece in pieces:
        before = stats.finals_done
        audio = np.concatenate([piece.audio, np.zeros(RATE, np.float32)])
        received = await stream(url, metadata, s16le(audio))
        total_s += len(piece.audio) / RATE
        utterances += stats.finals_done - before
        false_finals += [(piece.name, m["transcript"]) for m in received.finals if m["transcript"]]
    minutes = total_s / 60
    print(f"non-speech: {len(pieces)} pieces, {minutes:.1f} min, VAD threshold {args.threshold}")
    print(f"  utterances passed to Whisper: {utterances:.0f}")
    print(f"  finals with text: {len(false_finals)} ({len(false_finals) / minutes:.2f} per minute; "
          f"{len(false_finals) / max(utterances, 1):.1%} of utterances)")
    for name, text in false_finals:
        print(f"    {name}: {text!r}")


async def run_speech(url: str, engine: WhisperEngine, args: argparse.Namespace) -> None:
    refs, streamed, offline, counts = [], [], [], []
    for name, reference in english_clips():
        audio = read_wav(AUDIO_DIR / name)
        received = await stream(url, {}, s16le(np.concatenate([audio, np.zeros(RATE, np.float32)])))
        refs.append(reference)
        streamed.append(received.text)
        counts.append(len(received.finals))
        offline.append(engine.transcribe(audio, DecodeOptions(language="en")).text)
        print(f"  {name}: {len(received.finals)} finals, streaming WER {wer([reference], [received.text]):.1%}, "
              f"offline {wer([reference], [offline[-1]]):.1%}")
        if args.verbose:
            print(f"    streamed: {received.text}\n    offline:  {offline[-1]}")
    print(f"English clips ({len(refs)}, {sum(counts)} finals): streaming WER {wer(refs, streamed):.2%}, "
          f"offline {wer(refs, offline):.2%}")


async def run_monologue(url: str, engine: WhisperEngine, args: argparse.Namespace) -> None:
    clips = english_clips()
    orders = [clips] + [random.Random(seed).sample(clips, len(clips)) for seed in range(1, args.orders)]
    for number, order in enumerate(orders):
        if args.order and number not in args.order:
            continue
        audio = np.concatenate([read_wav(AUDIO_DIR / name) for name, _ in order])
        reference = " ".join(ref for _, ref in order)
        offline = engine.transcribe(audio, DecodeOptions(language="en")).text
        print(f"monologue {number} ({'manifest order' if number == 0 else f'shuffled, seed {number}'}): "
              f"{len(order)} clips joined, {len(audio) / RATE:.1f} s; offline WER {wer([reference], [offline]):.2%}")
        for silence_ms in (10_000, 300) if number == 0 else (10_000,):
            metadata = {"streaming_vad_config": {"min_silence_duration_ms": silence_ms}}
            pcm = s16le(np.concatenate([audio, np.zeros(RATE, np.float32)]))
            received = await stream(url, metadata, pcm, timeout=1800)
            print(f"  min_silence_duration_ms {silence_ms}: {len(received.finals)} finals, "
                  f"streaming WER {wer([reference], [received.text]):.2%}")
            if args.verbose:
                for message in received.finals:
                    print(f"    [{message['transcription_num']}] {message['transcript']}")


async def main(args: argparse.Namespace) -> int:
    engine = load_engine(args.model, cpu_threads=args.cpu_threads)
    started = time.perf_counter()
    settings = {"context_prompt": True} if args.context_prompt else {}
    with start_server(engine, SileroVAD(), **settings) as server:
        stats = server.app.state.whisperwire.scheduler.stats
        print(f"model={args.model} context_prompt={args.context_prompt}")
        if args.part in ("all", "nonspeech"):
            await run_nonspeech(server.url, stats, args)
        if args.part in ("all", "speech"):
            await run_speech(server.url, engine, args)
        if args.part in ("all", "monologue"):
            await run_monologue(server.url, engine, args)
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", default="all", choices=["all", "nonspeech", "speech", "monologue"])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--cpu-threads", type=int, default=0, help="0: CTranslate2's default")
    parser.add_argument("--threshold", type=float, default=0.5, help="VAD threshold for the non-speech part")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each generated signal")
    parser.add_argument("--orders", type=int, default=6, help="monologues: the manifest order and shuffles")
    parser.add_argument("--order", type=int, action="append",
                        help="monologues: run only this order (0 the manifest, N seed N); repeatable")
    parser.add_argument("--context-prompt", action="store_true", help="serve with --context-prompt")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
