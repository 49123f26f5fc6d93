"""Offline word error rate of a model on the shared clips: the ceiling streaming can reach.

Each clip is transcribed whole by WhisperEngine.transcribe, so the decoding settings are exactly
the server's (temperature 0, no VAD, no conditioning on previous text, the same drop rules).
The language is given, as with ``audio_language`` set; ``--detect`` decodes with auto detection
instead and reports what was detected.

    python benchmarks/offline_wer.py                               # tiny.en on English clips
    python benchmarks/offline_wer.py --model base --language de

Reports per clip and overall (corpus-level: all errors over all reference words) error rates
after Whisper's normalisers, plus transcription time and real-time factor (time / audio).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
from faster_whisper.audio import decode_audio

from whisperwire.engine import SAMPLE_RATE, DecodeOptions, WhisperEngine, load_engine

DEFAULT_AUDIO_DIR = Path("/work/shared/audio")
# Scripts written without spaces between words: a word error rate would count whole sentences.
_NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "km", "yue"})


@dataclass(frozen=True)
class Clip:
    file: str
    duration_s: float
    language: str
    reference: str
    status: str


@dataclass(frozen=True)
class Score:
    clip: Clip
    hypothesis: str
    detected: str
    error_rate: float
    seconds: float


def read_manifest(path: Path, language: str) -> list[Clip]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        Clip(
            file=row["file"],
            duration_s=float(row["duration_s"]),
            language=row["language"],
            reference=row["reference_transcript"],
            status=row["transcript_status"],
        )
        for row in rows
        if row["language"] == language and row["reference_transcript"].strip()
    ]


def normaliser(language: str):
    # Imported here: whisper_normalizer is a test/benchmark dependency, not the server's.
    if language == "en":
        from whisper_normalizer.english import EnglishTextNormalizer

        return EnglishTextNormalizer()
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer(split_letters=language in _NO_SPACE_LANGUAGES)


def error_rate(references: list[str], hypotheses: list[str], language: str) -> float:
    """Corpus-level WER (CER for languages written without spaces) after normalisation."""
    normalise = normaliser(language)
    refs = [normalise(r) for r in references]
    hyps = [normalise(h) for h in hypotheses]
    if language in _NO_SPACE_LANGUAGES:
        return jiwer.cer(
            ["".join(r.split()) for r in refs], ["".join(h.split()) for h in hyps]
        )
    return jiwer.wer(refs, hyps)


def score_clip(
    engine: WhisperEngine, clip: Clip, audio_dir: Path, options: DecodeOptions
) -> Score:
    audio = decode_audio(str(audio_dir / clip.file), sampling_rate=SAMPLE_RATE)
    started = time.perf_counter()
    result = engine.transcribe(np.asarray(audio, dtype=np.float32), options)
    seconds = time.perf_counter() - started
    return Score(
        clip=clip,
        hypothesis=result.text,
        detected=result.language,
        error_rate=error_rate([clip.reference], [result.text], clip.language),
        seconds=seconds,
    )


def run(args: argparse.Namespace) -> int:
    clips = read_manifest(args.audio_dir / "manifest.tsv", args.language)
    if not clips:
        print(f"no clips with language {args.language!r} and a transcript", file=sys.stderr)
        return 1
    engine = load_engine(args.model, cpu_threads=args.cpu_threads, cache_dir=args.cache_dir)
    options = DecodeOptions(
        language=None if args.detect else args.language, beam_width=args.beam_width
    )
    # One untimed call first: the first decode pays for allocations the others reuse.
    score_clip(engine, clips[0], args.audio_dir, options)
    metric = "CER" if args.language in _NO_SPACE_LANGUAGES else "WER"
    print(
        f"model={args.model} compute={engine.compute_type} language={args.language} "
        f"beam={args.beam_width} cpu_threads={args.cpu_threads} detect={args.detect}"
    )
    scores = [score_clip(engine, clip, args.audio_dir, options) for clip in clips]
    for s in scores:
        detected = f" detected={s.detected}" if args.detect else ""
        print(
            f"{metric} {s.error_rate:6.1%}  {s.seconds:5.2f} s for {s.clip.duration_s:6.2f} s "
            f"(RTF {s.seconds / s.clip.duration_s:.3f})  {s.clip.file} [{s.clip.status}]{detected}"
        )
        if args.verbose:
            print(f"    ref: {s.clip.reference}\n    hyp: {s.hypothesis}")
    overall = error_rate(
        [s.clip.reference for s in scores], [s.hypothesis for s in scores], args.language
    )
    audio_s = sum(s.clip.duration_s for s in scores)
    busy_s = sum(s.seconds for s in scores)
    print(
        f"overall {metric} {overall:.1%} over {len(scores)} clips; "
        f"{busy_s:.2f} s for {audio_s:.1f} s of audio (RTF {busy_s / audio_s:.3f})"
    )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en", help="tiny.en, base, a path or a Hub id")
    parser.add_argument("--language", default="en", help="manifest language to score")
    parser.add_argument("--beam-width", type=int, default=1)
    parser.add_argument("--cpu-threads", type=int, default=0, help="0: CTranslate2's default")
    parser.add_argument("--detect", action="store_true", help="detect the language per clip")
    parser.add_argument("--audio-dir", type=Path, default=DEFAULT_AUDIO_DIR)
    parser.add_argument("--cache-dir", type=Path, default=None, help="where base is assembled")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the transcripts")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
