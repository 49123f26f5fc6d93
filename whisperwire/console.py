"""What the client commands share (`stream`, `mic`): their options, the metadata those make, and
how messages and failures are printed; and the `stream` command itself."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, cast

import av

from whisperwire.audiofile import stream_file
from whisperwire.client import (
    API_KEY_ENV,
    DEFAULT_URL,
    AuthenticationError,
    ConnectError,
    ServerError,
    WhisperwireError,
)
from whisperwire.protocol import Transcription
from whisperwire.subtitles import SubtitleFormat, SubtitleWriter
from whisperwire.values import SAMPLE_RATE


OUTPUT_FORMATS = ("text", "jsonl", "srt", "vtt")


def add_session_arguments(parser: argparse.ArgumentParser, *, partials: bool) -> None:
    """The server and metadata options every client command has (``stream``, ``mic``)."""
    parser.add_argument("--url", default=DEFAULT_URL, help=f"WebSocket endpoint [{DEFAULT_URL}]")
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"API key [environment variable {API_KEY_ENV}]",
    )
    parser.add_argument(
        "--partials",
        action=argparse.BooleanOptionalAction,
        default=partials,
        help=f"ask for partial transcripts [{'on' if partials else 'off'}]",
    )
    parser.add_argument(
        "--partial-interval",
        type=float,
        metavar="S",
        help="seconds of audio between partials (implies --partials) [server default 0.5]",
    )
    parser.add_argument(
        "--language", metavar="CODE", help='language code, or "auto" to detect it [en]'
    )
    parser.add_argument("--word-timestamps", action="store_true", help="ask for word timings")


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``whisperwire stream``."""
    parser.add_argument("file", type=Path, help="audio file in any format ffmpeg reads")
    add_session_arguments(parser, partials=False)
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=_non_negative,
        default=1.0,
        metavar="X",
        help="pace as a multiple of real time; 0 sends as fast as possible [1]",
    )
    pace.add_argument(
        "--realtime", dest="speed", action="store_const", const=1.0, help="same as --speed 1"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default="text",
        help="text lines, one JSON message per line, or SRT/WebVTT subtitles of the finals "
        "(cut at word timings with --word-timestamps) [text]",
    )
    output.add_argument(
        "--json", dest="format", action="store_const", const="jsonl", help="same as --format jsonl"
    )


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def session_metadata(args: argparse.Namespace, sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """The metadata the command-line options ask for, for s16le audio at ``sample_rate``."""
    streaming: dict[str, Any] = {"encoding": "pcm_s16le", "sample_rate": sample_rate}
    if args.partials or args.partial_interval is not None:
        streaming["enable_partial_transcripts"] = True
    if args.partial_interval is not None:
        streaming["partial_transcript_interval_s"] = args.partial_interval
    whisper: dict[str, Any] = {}
    if args.language:
        whisper["audio_language"] = args.language
    if args.word_timestamps:
        whisper["show_word_timestamps"] = True
    metadata: dict[str, Any] = {"streaming_params": streaming}
    if whisper:
        metadata["whisper_params"] = whisper
    return metadata


def api_key_of(args: argparse.Namespace) -> str | None:
    return args.api_key or os.environ.get(API_KEY_ENV) or None


def message_tag(message: Transcription, *, details: bool = False) -> str:
    """``[final 0.00-3.42]``; a detected language adds ``de 0.97``. ``details`` always shows
    the language and adds the confidence: ``[final 0.00-3.42 en conf 0.91]``."""
    tags = ["final" if message.is_final else "partial"]
    if message.is_final and message.segments:
        tags.append(f"{message.segments[0].start_time:.2f}-{message.segments[-1].end_time:.2f}")
    if message.language_prob is not None:
        tags.append(f"{message.language_code} {message.language_prob:.2f}")
    elif details and message.language_code:
        tags.append(message.language_code)
    if details and message.is_final and message.confidence is not None:
        tags.append(f"conf {message.confidence:.2f}")
    return f"[{' '.join(tags)}]"


def word_lines(message: Transcription) -> list[str]:
    """One line per word of a final that carries word timestamps."""
    if not message.is_final:
        return []
    return [
        f"    {word.start_time:7.2f}-{word.end_time:.2f}  {word.word.strip()}  ({word.prob:.2f})"
        for segment in message.segments
        for word in segment.word_timestamps or ()
    ]


def format_message(message: Transcription, *, details: bool = False) -> str:
    """A human-readable rendering: ``[partial] text`` or ``[final 0.00-3.42] text``, then the
    words' timings when the final carries them."""
    head = f"{message_tag(message, details=details)} {message.transcript.strip()}".rstrip()
    return "\n".join([head, *word_lines(message)])


def message_writer(
    kind: str, out: TextIO, *, by_words: bool = False
) -> Callable[[Transcription], None]:
    """What ``stream --format KIND`` does with each message as it arrives."""
    if kind in ("srt", "vtt"):
        return SubtitleWriter(cast(SubtitleFormat, kind), out, by_words=by_words).write

    def show(message: Transcription) -> None:
        text = message.model_dump_json() if kind == "jsonl" else format_message(message)
        print(text, file=out, flush=True)

    return show


def report_failure(exc: WhisperwireError, err: TextIO) -> int:
    """Say on ``err`` why a session failed; return the exit status (2: never reached the
    server, 1: the server refused or ended the session)."""
    if isinstance(exc, ConnectError):
        print(f"error: {exc} (is `whisperwire serve` running?)", file=err)
        return 2
    if isinstance(exc, ServerError):
        field = f" [{exc.field}]" if exc.field else ""
        print(f"error: server: {exc}{field}", file=err)
    elif isinstance(exc, AuthenticationError):
        print(f"error: {exc}; pass --api-key or set {API_KEY_ENV}", file=err)
    else:
        print(f"error: {exc}", file=err)
    return 1


def run_stream(args: argparse.Namespace) -> int:
    """Run ``whisperwire stream``. Exit status: 0 done, 1 the server refused or failed the
    session, 2 the session could not start (unreadable file, server unreachable)."""
    out, err = sys.stdout, sys.stderr
    path = Path(args.file)
    if not path.is_file():
        print(f"error: {path}: no such file", file=err)
        return 2
    try:
        asyncio.run(
            stream_file(
                path,
                args.url,
                api_key_of(args),
                session_metadata(args),
                speed=args.speed,
                on_message=message_writer(args.format, out, by_words=args.word_timestamps),
            )
        )
    except WhisperwireError as exc:
        if isinstance(exc, ServerError) and args.format == "jsonl":
            error = {"code": exc.code, "message": exc.message, "field": exc.field}
            print(json.dumps({"type": "error", "error": error}), file=out, flush=True)
        return report_failure(exc, err)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        # Decoding happens before connecting, so these are about the file.
        print(f"error: cannot read {path}: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
