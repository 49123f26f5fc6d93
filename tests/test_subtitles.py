"""SRT and WebVTT from finals: the formatting rules, then `whisperwire stream --format srt|vtt`
against a live server on the shared clips, read back with independent SRT and WebVTT parsers."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from datetime import timedelta

import pytest
import srt
import webvtt

from tests.streaming import word_error_rate
from whisperwire.console import add_stream_arguments
from whisperwire.protocol import Segment, Transcription, WordTimestamp
from whisperwire.subtitles import MAX_CUE_CHARS, SubtitleWriter, cues, timestamp


def final(*segments: Segment, number: int = 0, is_final: bool = True) -> Transcription:
    return Transcription(
        transcription_num=number,
        is_final=is_final,
        transcript="".join(s.text for s in segments),
        confidence=0.9,
        language_code="en",
        language_prob=None,
        segments=list(segments),
    )


def segment(text: str, start: float, end: float, words: list[WordTimestamp] | None = None) -> Segment:
    return Segment(text=text, log_prob=-0.1, start_time=start, end_time=end, word_timestamps=words)


def timed_words(text: str, start: float, step: float = 0.3) -> list[WordTimestamp]:
    return [
        WordTimestamp(word=word, start_time=start + i * step, end_time=start + (i + 1) * step - 0.05, prob=0.9)
        for i, word in enumerate(text.split())
    ]


# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("seconds", "srt_text", "vtt_text"),
    [
        (3.3, "00:00:03,300", "00:00:03.300"),
        (0.0, "00:00:00,000", "00:00:00.000"),
        (59.9996, "00:01:00,000", "00:01:00.000"),
        (3723.0456, "01:02:03,046", "01:02:03.046"),
        (-0.01, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamps(seconds: float, srt_text: str, vtt_text: str) -> None:
    assert timestamp(seconds, "srt") == srt_text
    assert timestamp(seconds, "vtt") == vtt_text


def test_one_cue_per_segment() -> None:
    message = final(segment(" Ask not", 6.27, 7.36), segment(" what your country can do.", 8.42, 10.62))
    assert [(c.start, c.end, c.text) for c in cues(message)] == [
        (6.27, 7.36, "Ask not"),
        (8.42, 10.62, "what your country can do."),
    ]


def test_word_cues_are_one_line_and_end_with_sentences() -> None:
    text = "And so my fellow Americans, ask not what your country can do for you. Ask what you can do."
    words = timed_words(text, 1.0)
    message = final(segment(" " + text, 1.0, words[-1].end_time, words))
    found = cues(message, by_words=True)
    assert " ".join(c.text for c in found) == text
    assert all(len(c.text) <= MAX_CUE_CHARS for c in found)
    assert [c.text for c in found] == [
        "And so my fellow Americans, ask not what",
        "your country can do for you.",
        "Ask what you can do.",
    ]
    # Each cue takes the times of its first and last word.
    assert (found[1].start, found[1].end) == (words[8].start_time, words[13].end_time)


def test_word_cues_join_words_as_the_language_writes_them() -> None:
    words = [WordTimestamp(word=w, start_time=i, end_time=i + 0.5, prob=0.9) for i, w in enumerate(["客観的", "実在の", "判断"])]
    message = final(segment("客観的実在の判断", 0.0, 2.5, words)).model_copy(update={"language_code": "ja"})
    assert [c.text for c in cues(message, by_words=True)] == ["客観的実在の判断"]
    english = final(segment(" Ask not", 0.0, 1.5, timed_words("Ask not", 0.0)))
    assert [c.text for c in cues(english, by_words=True)] == ["Ask not"]


def test_without_word_times_word_cues_fall_back_to_segments() -> None:
    message = final(segment(" Hello there.", 0.5, 1.5))
    assert [c.text for c in cues(message, by_words=True)] == ["Hello there."]


def test_writer_numbers_orders_and_skips_partials_and_empty_finals() -> None:
    out = io.StringIO()
    writer = SubtitleWriter("srt", out)
    writer.write(final(segment(" first", 1.0, 2.0), is_final=False))
    writer.write(final(segment(" first", 1.0, 2.0), segment(" overlapping", 1.9, 2.5)))
    writer.write(final(number=1))
    writer.write(final(segment(" second", 3.0, 4.0), number=2))
    assert out.getvalue() == (
        "1\n00:00:01,000 --> 00:00:02,000\nfirst\n\n"
        "2\n00:00:02,000 --> 00:00:02,500\noverlapping\n\n"
        "3\n00:00:03,000 --> 00:00:04,000\nsecond\n\n"
    )
    parsed = list(srt.parse(out.getvalue()))
    assert [s.index for s in parsed] == [1, 2, 3]


def test_vtt_has_its_header_and_escapes_markup() -> None:
    out = io.StringIO()
    writer = SubtitleWriter("vtt", out)
    writer.write(final(segment(" Fish & chips <3", 0.25, 1.5)))
    assert out.getvalue() == "WEBVTT\n\n1\n00:00:00.250 --> 00:00:01.500\nFish &amp; chips &lt;3\n\n"
    [caption] = webvtt.from_string(out.getvalue()).captions
    assert (caption.start, caption.end) == ("00:00:00.250", "00:00:01.500")


# --------------------------------------------------------------------------- the stream command


SRT_TIME = r"\d\d:\d\d:\d\d,\d\d\d"
VTT_TIME = r"\d\d:\d\d:\d\d\.\d\d\d"


def stream_command(url: str, path: object, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "whisperwire.cli", "stream", str(path), "--url", url, "--speed", "0", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def seconds(value: timedelta) -> float:
    return value.total_seconds()


def test_stream_srt_has_a_cue_per_phrase_with_the_speech_times(server, clips) -> None:
    # 3 s of silence, JFK's four phrases (each its own final, README), 5 s of silence.
    clip = clips["en_jfk_padded_3s_5s_silence.wav"]
    text = stream_command(server.url, clip.path, "--format", "srt")
    time_lines = [line for line in text.splitlines() if "-->" in line]
    assert all(re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", line) for line in time_lines), time_lines
    subtitles = list(srt.parse(text))
    # A cue per segment, numbered from 1: at least one for each phrase. Heard with the phrases
    # before it, Whisper may split the last one in two ("ask what you" / "can do for ...").
    assert [s.index for s in subtitles] == list(range(1, len(subtitles) + 1)), text
    assert len(subtitles) >= 4, text
    times = [(seconds(s.start), seconds(s.end)) for s in subtitles]
    assert all(start < end for start, end in times), times
    assert all(a[1] <= b[0] for a, b in zip(times, times[1:])), times
    assert 3.0 <= times[0][0] and times[-1][1] <= 14.2, times  # the speech lies in 3 s..14 s
    spoken = " ".join(s.content for s in subtitles)
    # Each phrase is recognised alone, and how tiny.en hears one depends on the CPU's int8
    # kernels: one machine hears the first as "and so am i fell america" (4 of 22 words). One
    # phrase misheard passes; a phrase lost does not.
    assert word_error_rate(clip.reference, spoken) <= 0.25, spoken


def test_stream_vtt_with_word_timestamps_cuts_long_speech_into_lines(server, clips) -> None:
    clip = clips["en_librispeech_1221-135766-0001.wav"]  # 16.7 s read without a long pause
    text = stream_command(server.url, clip.path, "--format", "vtt", "--word-timestamps")
    assert text.startswith("WEBVTT\n\n")
    time_lines = [line for line in text.splitlines() if "-->" in line]
    assert all(re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", line) for line in time_lines), time_lines
    captions = webvtt.from_string(text).captions
    assert [c.identifier for c in captions] == [str(i) for i in range(1, len(captions) + 1)]
    assert len(captions) >= len(clip.reference) // MAX_CUE_CHARS, text
    assert all(len(c.text) <= MAX_CUE_CHARS for c in captions), text
    times = [(c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000) for c in captions]
    assert all(start <= end for start, end in times), times
    assert all(a[1] <= b[0] for a, b in zip(times, times[1:])), times
    assert 0.0 <= times[0][0] and times[-1][1] <= clip.duration_s + 0.1, times
    spoken = " ".join(c.text for c in captions)
    assert word_error_rate(clip.reference, spoken) <= 0.15, spoken  # offline: 2 of 48 words wrong


def test_json_is_still_the_jsonl_format() -> None:
    # `--json` end to end: tests/test_cli.py. Here: it is the same option as `--format jsonl`.
    parser = argparse.ArgumentParser()
    add_stream_arguments(parser)
    assert parser.parse_args(["a.wav", "--json"]).format == "jsonl"
    assert parser.parse_args(["a.wav"]).format == "text"
    with pytest.raises(SystemExit):
        parser.parse_args(["a.wav", "--json", "--format", "srt"])
