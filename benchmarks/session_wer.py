"""Streamed against offline word error rate through the session core alone, recognition inline.

    python benchmarks/session_wer.py                      # every English clip, the defaults
    python benchmarks/session_wer.py --prefix-words 0     # left context by audio and time only
    python benchmarks/session_wer.py --prefix-words 4 --clip hvb --verbose
    python benchmarks/session_wer.py --encoder-window fit --windows 10,15,20,25,30
    python benchmarks/session_wer.py --lookahead 2    # what right context would buy (an oracle)
    python benchmarks/session_wer.py --lookahead 2 --cut text   # the same, its words cut by text
    python benchmarks/session_wer.py --min-silence-ms 800  # a client that waits longer for a pause

Each English clip of the manifest (not the padded JFK copy), with a second of silence after it,
is fed to a `Session` in 100 ms frames with the default metadata and the server's defaults
(drafts, VAD batches of three); every recognition it asks for runs at once, as on a server that
always keeps up, through `scheduler.transcribe` and the real tiny.en and Silero VAD. No
network, no clock: the result depends only on the audio and the code, so variants of the left
context can be compared in one run each (`--prefix-words`: how many of the words sent anchor it,
0 for none; `--encoder-window fit`: the smallest of `--windows` that holds each recognition's
audio; `--lookahead S`: an oracle no live stream can have, each draft and final hears the next S
seconds of the clip as well and keeps only the words that start in its own audio, which measures
how much of the gap to offline is the audio after a final, at the price of S seconds of
latency; with `--cut text` it keeps instead the words that align with its recognition without
that audio, so Whisper's word times play no part in the cut; `--min-silence-ms`: a client's
longer silence window). Offline is each whole clip decoded once (30 s windows, same model and beam). Corpus WER
after Whisper's English normaliser, and the process's CPU seconds in the streamed recognitions.
About 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import jiwer
import numpy as np
from whisper_normalizer.english import EnglishTextNormalizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import AUDIO_DIR, _manifest, read_wav  # noqa: E402
from whisperwire import context, engine as engines  # noqa: E402
from whisperwire.config import ServerConfig  # noqa: E402
from whisperwire.engine import load_engine  # noqa: E402
from whisperwire.protocol import Transcription  # noqa: E402
from whisperwire.scheduler import transcribe  # noqa: E402
from whisperwire.session import Session  # noqa: E402
from whisperwire.vad import SileroVAD  # noqa: E402
from whisperwire.values import SAMPLE_RATE, DecodeOptions, Event, InferenceRequest, Result, RunInference, SendMessage, Word  # noqa: E402

_normalise = EnglishTextNormalizer()
FRAME_S = 0.1


def wer(references: list[str], hypotheses: list[str]) -> float:
    return jiwer.wer([_normalise(r) for r in references], [_normalise(h) for h in hypotheses])


def with_lookahead(request: InferenceRequest, audio: np.ndarray, seconds: float) -> InferenceRequest:
    """The request with the next ``seconds`` of the stream's audio after its own."""
    end = round(request.offset_s * SAMPLE_RATE) + len(request.audio)
    return replace(request, audio=np.concatenate([request.audio, audio[end : end + round(seconds * SAMPLE_RATE)]]))


def words_kept(result: Result, keep: Callable[[int, Word], Word | None]) -> Result:
    """The result with each word (numbered through the whole result) as ``keep`` gives it back,
    or without it where that is None."""
    segments, n = [], 0
    for segment in result.segments:
        words = []
        for word in segment.words or ():
            kept, n = keep(n, word), n + 1
            if kept is not None:
                words.append(kept)
        if words:
            text = "".join(w.word for w in words)
            segments.append(replace(segment, text=text, end=min(segment.end, words[-1].end), words=tuple(words)))
    return replace(result, segments=tuple(segments))


def until(result: Result, end_s: float) -> Result:
    """The result with only the words that start before ``end_s`` (seconds from its audio[0])."""
    return words_kept(result, lambda _, w: w if w.start < end_s else None)


def aligned_to(own: Result, heard: Result, end_s: float) -> Result:
    """``heard``'s words as far as they stand for ``own``'s: the request's words as decoded with
    the audio after it, cut by text, not by time. An edit-distance alignment in which a
    substitution costs by spelling (American/Americans is nearly free) and the words ``heard``
    has after the last of ``own`` cost nothing (they are the next utterance's). By hand: jiwer's
    and rapidfuzz's edit distances price every substitution the same."""
    def normal(result: Result) -> list[tuple[int, str]]:
        words = [w for s in result.segments for w in s.words or ()]
        return [(i, context._normal(w.word)) for i, w in enumerate(words) if context._normal(w.word)]

    mine, theirs = normal(own), normal(heard)
    if not mine or not theirs:
        return own
    rows = [[float(j) for j in range(len(theirs) + 1)]]
    for i, (_, a) in enumerate(mine, start=1):
        row = [float(i)]
        for j, (_, b) in enumerate(theirs, start=1):
            swap = 0.0 if a == b else 1.0 - difflib.SequenceMatcher(None, a, b).ratio()
            row.append(min(rows[-1][j - 1] + swap, rows[-1][j] + 1, row[j - 1] + 1))
        rows.append(row)
    last = rows[-1]
    k = min(range(len(last)), key=lambda j: (last[j], j))
    if not k:
        return own
    # The words are the request's: none ends after its audio, so the next one is anchored on them.
    last = theirs[k - 1][0]
    return words_kept(heard, lambda i, w: replace(w, start=min(w.start, end_s), end=min(w.end, end_s)) if i <= last else None)


def stream(engine, vad: SileroVAD, audio: np.ndarray, verbose: bool, lookahead_s: float = 0.0, metadata: str = "{}", cut: str = "time") -> list[Transcription]:  # noqa: ANN001
    config = ServerConfig()
    session = Session(
        "bench", model=engine.info, count_tokens=engine.count_tokens, new_vad=vad.new_stream,
        now=0.0, draft_finals=config.draft_finals, vad_batch=config.vad_batch,
    )
    finals: list[Transcription] = []

    def act(events: list[Event]) -> None:
        queue = list(events)
        while queue:
            event = queue.pop(0)
            if isinstance(event, RunInference) and event.request.kind != "partial":
                request = event.request
                if lookahead_s > 0 and cut == "text":
                    heard = transcribe(engine, with_lookahead(request, audio, lookahead_s))
                    result = aligned_to(transcribe(engine, request), heard, len(request.audio) / SAMPLE_RATE)
                elif lookahead_s > 0:
                    heard = with_lookahead(request, audio, lookahead_s)
                    result = until(transcribe(engine, heard), len(request.audio) / SAMPLE_RATE)
                else:
                    result = transcribe(engine, request)
                if verbose:
                    print(f"    {request.kind} {request.transcription_num} {request.offset_s:.2f}-"
                          f"{request.offset_s + len(request.audio) / SAMPLE_RATE:.2f} s, context {request.context_s:.2f} s, "
                          f"prefix {request.options.prefix!r}: {result.text!r}")
                queue += session.inference_done(request, result)
            elif isinstance(event, SendMessage) and isinstance(event.message, Transcription) and event.message.is_final:
                finals.append(event.message)

    act(session.receive_text(metadata, 0.0))
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = round(SAMPLE_RATE * FRAME_S) * 2
    for n, offset in enumerate(range(0, len(pcm), step), start=1):
        act(session.receive_bytes(pcm[offset : offset + step], n * FRAME_S))
    act(session.receive_text('{"terminate_session": true}', len(pcm) / 2 / SAMPLE_RATE))
    return finals


def main(args: argparse.Namespace) -> int:
    if args.prefix_words == 0:
        context.SentWords.anchor = lambda *_: None  # type: ignore[method-assign]
    else:
        context.PREFIX_WORDS = args.prefix_words
    if args.windows:
        engines.FittedWindowModel.windows_s = tuple(int(w) for w in args.windows.split(","))
    engine, vad = load_engine(args.model, fit_window=args.encoder_window == "fit"), SileroVAD()
    offline_engine = engine if args.encoder_window == "full" else load_engine(args.model)  # offline: 30 s windows
    engine_s = [0.0]
    timed = engine.transcribe

    def transcribe_timed(audio, options):  # noqa: ANN001, ANN202
        began = time.process_time()
        try:
            return timed(audio, options)
        finally:
            engine_s[0] += time.process_time() - began

    engine.transcribe = transcribe_timed  # type: ignore[method-assign]
    clips = [
        c for name, c in _manifest().items()
        if c.language == "en" and name != "en_jfk_padded_3s_5s_silence.wav" and (not args.clip or any(k in name for k in args.clip))
    ]
    print(f"model={args.model} prefix_words={args.prefix_words} lookahead={args.lookahead} encoder_window={args.encoder_window} "
          f"windows={engines.FittedWindowModel.windows_s if args.encoder_window == 'fit' else 30} audio={AUDIO_DIR}")
    vad_config = {"min_silence_duration_ms": args.min_silence_ms} if args.min_silence_ms is not None else {}
    metadata = json.dumps({"streaming_vad_config": vad_config} if vad_config else {})
    started = time.monotonic()
    rows, streamed_s = [], 0.0
    for clip in clips:
        audio = read_wav(clip.path)
        before = engine_s[0]
        finals = stream(engine, vad, np.concatenate([audio, np.zeros(SAMPLE_RATE, np.float32)]), args.verbose, args.lookahead, metadata, args.cut)
        streamed_s += engine_s[0] - before
        streamed = " ".join(f.transcript for f in finals if f.transcript)
        offline = offline_engine.transcribe(audio, DecodeOptions(language="en")).text
        rows.append({"clip": clip.path.name, "reference": clip.reference, "streamed": streamed, "offline": offline, "finals": len(finals)})
        print(f"  {clip.path.name}: {len(finals)} finals, streamed {wer([clip.reference], [streamed]):.1%}, "
              f"offline {wer([clip.reference], [offline]):.1%}", flush=True)
        if args.verbose:
            print(f"    streamed: {streamed}\n    offline:  {offline}")
    refs = [r["reference"] for r in rows]
    streamed_wer, offline_wer = wer(refs, [r["streamed"] for r in rows]), wer(refs, [r["offline"] for r in rows])
    print(f"English clips ({len(rows)}): streamed WER {streamed_wer:.2%}, offline {offline_wer:.2%}; "
          f"streamed recognition CPU {streamed_s:.1f} s ({time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"prefix_words": args.prefix_words, "lookahead_s": args.lookahead, "cut": args.cut, "min_silence_ms": args.min_silence_ms, "encoder_window": args.encoder_window, "windows": args.windows, "streamed_wer": streamed_wer, "offline_wer": offline_wer, "recognition_cpu_s": streamed_s, "clips": rows}, indent=1))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--prefix-words", type=int, default=context.PREFIX_WORDS, help="words sent that anchor the left context; 0: none [%(default)s]")
    parser.add_argument("--encoder-window", choices=["full", "fit"], default="full", help="as `whisperwire serve --encoder-window` [%(default)s]")
    parser.add_argument("--windows", help="with fit: the encoder windows in seconds, e.g. 10,15,20,25,30 [20,25,30]")
    parser.add_argument("--clip", action="append", default=[], help="only clips whose file name contains this (repeatable)")
    parser.add_argument("--lookahead", type=float, default=0.0, metavar="S", help="oracle: each draft and final also hears the next S s of the clip [0]")
    parser.add_argument("--cut", choices=["time", "text"], default="time", help="with --lookahead: keep the words that start in the request's audio (time), or the words aligned with its own recognition's (text) [%(default)s]")
    parser.add_argument("--min-silence-ms", type=int, help="the client's silence window, min_silence_duration_ms [300]")
    parser.add_argument("--verbose", action="store_true", help="each recognition, and the texts")
    parser.add_argument("--json", type=Path, metavar="OUT")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
