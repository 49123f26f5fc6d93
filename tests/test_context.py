"""Left context: a final hears the audio before it and keeps only its own words.

The cut alone on made-up words (which words are the request's), then tiny.en on JFK cut into
three finals at its pauses: together they say what Whisper says of the whole clip, no word
twice and none lost, with times from the stream's start.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from tests.streaming import words
from whisperwire.context import ANCHOR_GAP_S, LEFT_CONTEXT_S, PREFIX_WORDS, SentWords, after_prefix, context_samples, cut, last_words, left_context
from whisperwire.endpointer import Due
from whisperwire.engine import DecodeOptions, ModelInfo, Result, SegmentResult, Word
from whisperwire.messages import transcription
from whisperwire.scheduler import transcribe
from whisperwire.values import SAMPLE_RATE, InferenceRequest

RATE = SAMPLE_RATE


def words_result(*words: tuple[str, float]) -> Result:
    found = tuple(Word(w, start, start + 0.2, 0.9) for w, start in words)
    segment = SegmentResult(
        text="".join(w for w, _ in words), start=words[0][1], end=found[-1].end, avg_logprob=-0.2,
        n_tokens=2 * len(words), no_speech_prob=0.01, compression_ratio=1.2, words=found,
    )
    return Result(segments=(segment,), language="en", language_prob=None)


def final(context_s: float, previous: str | None = None, seconds: float = 4.0) -> InferenceRequest:
    audio = np.zeros(int(seconds * RATE), dtype=np.float32)
    return InferenceRequest(
        "s", "final", 1, audio, 10.0, DecodeOptions(language="en"),
        context_s=context_s, context_words=last_words(previous),
    )


def test_words_that_start_in_the_context_are_cut_and_the_rest_keep_their_times() -> None:
    result = words_result((" And", 0.3), (" so", 0.8), (" my", 1.96), (" fellow", 2.3))
    [segment] = cut(final(context_s=2.0), result).segments
    # "my" starts 40 ms before the cut: inside the alignment's tolerance, so it is this request's.
    assert [w.word for w in segment.words or ()] == [" my", " fellow"]
    assert (segment.text, segment.start, segment.end, segment.n_tokens) == (" my fellow", 1.96, 2.5, 4)


def test_a_repeat_of_the_previous_finals_last_words_at_the_cut_is_the_same_words() -> None:
    result = words_result((" you", 2.1), (" too.", 2.3), (" Bye.", 3.0))
    kept = cut(final(context_s=2.0, previous="Thanks, you too."), result)
    assert kept.text == "Bye."
    # Further from the cut, a repeat is said again.
    result = words_result((" too.", 2.6), (" Bye.", 3.0))
    assert cut(final(context_s=2.0, previous="you too."), result).text == "too. Bye."
    # ... unless the VAD had heard nothing of the utterance there yet: then it is the context's.
    late = replace(final(context_s=2.0, previous="you too."), heard_from_s=2.9)
    assert cut(late, result).text == "Bye."
    # Said again where the VAD hears it, it is kept.
    assert cut(replace(late, heard_from_s=2.6), result).text == "too. Bye."


def test_only_words_of_the_context_give_an_empty_result() -> None:
    result = words_result((" ask", 0.5), (" not.", 0.9))
    assert cut(final(context_s=2.0), result).segments == ()


def test_context_fits_whisper_window_with_the_utterance() -> None:
    assert context_samples(5 * RATE, 20 * RATE, RATE) == LEFT_CONTEXT_S * RATE
    assert context_samples(25 * RATE, 20 * RATE, RATE) == 5 * RATE  # 30 s in all
    assert context_samples(30 * RATE, 20 * RATE, RATE) == 0
    assert context_samples(5 * RATE, RATE, RATE) == RATE  # only what the stream still holds


class WordEngine:
    """Says the same words whatever it hears, and records the options it was given."""

    info = ModelInfo(name="words", multilingual=False, languages=frozenset({"en"}))

    def __init__(self, result: Result) -> None:
        self.result, self.options = result, []

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result:
        self.options.append(options)
        return self.result


def test_a_final_with_context_is_decoded_with_word_times_and_sent_as_asked() -> None:
    engine = WordEngine(words_result((" so", 0.8), (" fellow", 2.3)))
    result = transcribe(engine, final(context_s=2.0))
    assert engine.options[0].word_timestamps and result.text == "fellow"
    # Words stay in the result (the session keeps the ones it sends); the message has them only if asked.
    assert transcription(final(context_s=2.0), result, is_final=True).segments[0].word_timestamps is None
    request = replace(final(context_s=2.0), options=DecodeOptions(language="en", word_timestamps=True))
    assert [w.word for w in transcribe(engine, request).segments[0].words or ()] == [" fellow"]


@pytest.mark.parametrize("cuts", [(4.45, 7.85)])
def test_three_finals_with_left_context_say_what_whisper_says_of_the_whole_clip(engine, clip_audio, cuts) -> None:
    audio = clip_audio("en_jfk_inaugural_11s.wav")
    whole = engine.transcribe(audio, DecodeOptions(language="en")).text
    bounds = [0, *(round(c * RATE) for c in cuts), len(audio)]
    texts, times = [], []
    for num, (start, end) in enumerate(itertools.pairwise(bounds)):
        context = context_samples(end - start, start, RATE)
        request = InferenceRequest(
            "jfk", "final", num, audio[start - context : end], (start - context) / RATE,
            DecodeOptions(language="en", word_timestamps=True),
            context_s=context / RATE, context_words=last_words(texts[-1] if texts else None),
        )
        result = transcribe(engine, request)
        message = transcription(request, result, is_final=True)
        texts.append(message.transcript)
        own = [(w.start_time, w.end_time) for s in message.segments for w in s.word_timestamps or ()]
        # Every word this final sends was spoken in its own audio, not in its context.
        assert own and all(start / RATE - 0.1 <= a and b <= end / RATE + 0.1 for a, b in own), own
        times += own
    assert words(" ".join(texts)) == words(whole), texts
    assert times == sorted(times)


# --------------------------------------------------------------------------- anchored on the words sent


def prefixed(prefix: str, context_s: float = 2.0) -> InferenceRequest:
    return replace(final(context_s), options=DecodeOptions(language="en", prefix=prefix))


def test_the_forced_prefix_s_words_are_cut_whatever_their_times() -> None:
    # Whisper repeats the prefix first (forced), then goes on; the alignment may put a prefix
    # word after the context's end, or a new word before it: the words decide, not the times.
    result = words_result((" call,", 0.4), (" please?", 2.3), (" I", 1.9), (" would", 2.6))
    [segment] = after_prefix(prefixed(" call, please?"), result).segments
    assert [w.word for w in segment.words or ()] == [" I", " would"] and segment.start == 1.9


def test_a_result_of_the_prefix_alone_is_empty_though_its_last_word_lies_past_the_context() -> None:
    engine = WordEngine(words_result((" call,", 0.4), (" please?", 2.3)))
    assert transcribe(engine, prefixed(" call, please?")).segments == ()  # the time cut would keep "please?"


def test_a_result_not_beginning_with_the_prefix_falls_back_to_the_time_cut() -> None:
    # A dropped segment took the prefix with it: counting words would eat new ones.
    result = words_result((" would", 2.6), (" like", 3.0))
    assert after_prefix(prefixed(" please?"), result) is None
    assert after_prefix(prefixed(" please? I would like to"), result) is None  # words run out first
    engine = WordEngine(result)
    assert transcribe(engine, prefixed(" please?")).text == "would like"  # cut by time at 2.0 s
    assert engine.options[0].prefix == " please?"


def test_the_anchor_is_the_first_of_the_last_words_sent_within_reach() -> None:
    sent = SentWords(RATE)
    words = tuple(Word(f" w{i}", 0.5 * i, 0.5 * i + 0.4, 0.9) for i in range(12))
    request = replace(final(0.0), offset_s=1.0)
    sent.sent(request, Result((SegmentResult("", 0, 6, -0.2, 12, 0.0, 1.0, words),), "en", None))
    # The words lie at 1.0 - 6.9 s of the stream; the next speech is heard at 7.5 s.
    start, heard, room = round(7.0 * RATE), round(7.5 * RATE), round(LEFT_CONTEXT_S * RATE)
    at, prefix = sent.anchor(start, heard, earliest=0, room=room)
    assert prefix == "".join(f" w{i}" for i in range(12 - PREFIX_WORDS, 12))
    assert at == round((1.0 + 0.5 * (12 - PREFIX_WORDS)) * RATE)
    at, prefix = sent.anchor(start, heard, earliest=round(5.2 * RATE), room=room)
    assert (at, prefix) == (round(5.5 * RATE), " w9 w10 w11")  # only what the stream still holds
    assert sent.anchor(start, heard, earliest=0, room=RATE // 4) is None  # no word starts in the last 0.25 s
    # Speech that starts more than ANCHOR_GAP_S after the last word sent does not go on from it.
    assert sent.anchor(start, round((6.9 + ANCHOR_GAP_S + 0.1) * RATE), earliest=0, room=room) is None
    due = Due("final", 3, start, start + RATE, (), heard_from=heard)
    assert left_context(due, 0, sent, RATE) == sent.anchor(start, heard, 0, room)
    assert left_context(due, 0, None, RATE) == (0, None)  # an earlier final not out: all the audio held (7 s)
