"""The endpointer alone: probabilities in, what is due out, to the sample. No audio, no model."""

from __future__ import annotations

import pytest

from whisperwire.endpointer import Due, DraftVoid, EndpointSettings, Endpointer, Progress, quietest_point
from whisperwire.values import SAMPLE_RATE, WINDOW_SAMPLES

W = WINDOW_SAMPLES
SPEECH, QUIET = 0.95, 0.02


def settings(**changes: object) -> EndpointSettings:
    # lookback 0: the start is where the VAD dates the speech; the coverage tests set it.
    base = dict(threshold=0.5, min_silence=10 * W, pad=0, max_samples=30 * SAMPLE_RATE, partial_interval=None, drafts=False, lookback=0)
    return EndpointSettings(**{**base, **changes})  # type: ignore[arg-type]


def run(endpointer: Endpointer, probs: list[float], first: int = 0, drafts: bool = True) -> list:
    found = []
    for i, prob in enumerate(probs, start=first):
        found += endpointer.window(i * W, prob, earliest=0, drafts=drafts)
    return found


def dues(found: list, kind: str) -> list[Due]:
    return [d for d in found if isinstance(d, Due) and d.kind == kind]


def test_an_utterance_ends_after_the_silence_window_where_the_silence_began() -> None:
    endpointer = Endpointer(settings())
    found = run(endpointer, [QUIET] * 5 + [SPEECH] * 20 + [QUIET] * 10)
    [final] = dues(found, "final")
    assert (final.num, final.start, final.end, final.speech_end) == (0, 5 * W, 25 * W, 25 * W)
    assert final.speech == tuple(i * W for i in range(5, 25))
    assert endpointer.open_num is None and endpointer.last_end == 25 * W


def test_one_window_short_of_the_silence_window_ends_nothing_and_a_soft_window_restarts_it() -> None:
    endpointer = Endpointer(settings())
    assert dues(run(endpointer, [SPEECH] * 5 + [QUIET] * 9), "final") == []
    # 0.4 is under the threshold but above threshold - 0.15: not silence.
    assert dues(run(endpointer, [0.4] + [QUIET] * 9, first=14), "final") == []
    [final] = dues(run(endpointer, [QUIET], first=24), "final")
    assert final.end == 15 * W  # the silence began after the soft window


def test_a_last_word_scored_under_the_end_threshold_is_in_its_utterance_s_final() -> None:
    # The silence is counted from window 25 (under 0.35), but the VAD heard a soft word there
    # (0.25, over the onset floor 0.2) until window 29: the final's audio reaches it, and its
    # end is still due when the silence window that began at 25 is over.
    endpointer = Endpointer(settings(pad=W))
    found = run(endpointer, [SPEECH] * 25 + [0.25, 0.3, 0.22, 0.25, QUIET, 0.1] + [QUIET] * 4)
    [final] = dues(found, "final")
    assert (final.end, final.speech_end) == (30 * W, 29 * W)  # the soft word and the pad after it
    assert endpointer.last_end == 30 * W
    # The same speech with the word under the floor: nothing the VAD heard, so the final ends
    # with the speech, as before.
    [plain] = dues(run(Endpointer(settings(pad=W)), [SPEECH] * 25 + [0.15] * 4 + [QUIET] * 6), "final")
    assert (plain.end, plain.speech_end) == (26 * W, 25 * W)


def test_a_sound_still_going_on_when_the_silence_window_ends_is_left_to_the_next_utterance() -> None:
    # Windows 33-34 rise towards the threshold just as the window ends at 35: the next
    # utterance's first word starting, not this one's last; the soft word at 27 is this one's.
    probs = [SPEECH] * 25 + [QUIET, QUIET, 0.3, QUIET, QUIET, QUIET, QUIET, QUIET, 0.25, 0.3]
    for lookback, start in ((0, 33 * W), (20 * W, 28 * W)):
        endpointer = Endpointer(settings(lookback=lookback))
        [final] = dues(run(endpointer, probs), "final")
        assert final.end == 28 * W
        [second] = dues(run(endpointer, [SPEECH] * 5 + [QUIET] * 10, first=35), "final")
        # Its start is dated back over the rising windows (or, covered, is where the first ended),
        # and it heard speech from them on.
        assert (second.start, second.heard_from) == (start, 33 * W)


def test_a_draft_waits_for_the_soft_tail_and_is_asked_again_when_a_soft_word_follows() -> None:
    endpointer = Endpointer(settings(pad=W, drafts=True))
    found = run(endpointer, [SPEECH] * 5 + [0.3, 0.25])
    assert dues(found, "draft") == []  # the voice is still fading: its end is not known yet
    [draft] = dues(run(endpointer, [QUIET], first=7), "draft")
    assert draft.end == 8 * W
    found = run(endpointer, [0.25, QUIET], first=8)  # a soft word after it, heard and over
    assert found[0] == DraftVoid(0)
    [again] = dues(found, "draft")
    assert again.end == 10 * W
    [final] = dues(run(endpointer, [QUIET] * 5, first=10), "final")
    assert final.end == again.end  # the final's audio is the second draft's: it takes its recognition over


def test_the_start_is_dated_back_over_the_rising_probability() -> None:
    endpointer = Endpointer(settings())
    found = run(endpointer, [QUIET] * 3 + [0.25, 0.3, 0.45] + [SPEECH] * 5 + [QUIET] * 10)
    assert dues(found, "final")[0].start == 3 * W  # windows >= 0.2 just before the trigger
    found = run(Endpointer(settings()), [QUIET] * 3 + [0.15] + [SPEECH] * 5 + [QUIET] * 10)
    assert dues(found, "final")[0].start == 4 * W  # 0.15 is under the floor


def test_a_covered_start_still_says_where_the_vad_first_heard_anything() -> None:
    # Covered from sample 0 (the look-back), but nothing reached the onset floor until window 6.
    endpointer = Endpointer(settings(lookback=20 * W, pad=W))
    [final] = dues(run(endpointer, [QUIET] * 6 + [0.25, 0.1] + [SPEECH] * 5 + [QUIET] * 10), "final")
    assert (final.start, final.heard_from) == (0, 5 * W)  # window 6, less the pad
    [at_once] = dues(run(Endpointer(settings()), [SPEECH] * 3 + [QUIET] * 10), "final")
    assert at_once.heard_from == at_once.start == 0


def test_the_start_never_goes_before_what_is_held_or_the_previous_end() -> None:
    endpointer = Endpointer(settings(pad=3 * W))
    [first] = dues(run(endpointer, [SPEECH] * 5 + [QUIET] * 10), "final")
    assert first.end == 8 * W  # the pad after the speech
    found = []
    for i in range(15, 40):
        found += endpointer.window(i * W, SPEECH if 15 <= i < 20 else QUIET, earliest=14 * W)
    [second] = dues(found, "final")
    assert second.start == 14 * W  # 12 with the pad, but 14 is the first sample still held


def test_partials_are_due_every_interval_and_not_during_silence() -> None:
    endpointer = Endpointer(settings(partial_interval=4 * W))
    found = run(endpointer, [SPEECH] * 13 + [QUIET] * 10)
    assert [(p.start, p.end) for p in dues(found, "partial")] == [(0, 4 * W), (0, 8 * W), (0, 12 * W)]


def test_a_draft_is_due_once_the_pad_has_arrived_and_void_when_speech_resumes() -> None:
    endpointer = Endpointer(settings(pad=2 * W, drafts=True))
    found = run(endpointer, [SPEECH] * 5 + [QUIET] * 4)
    [draft] = dues(found, "draft")
    assert (draft.start, draft.end) == (0, 7 * W)  # the speech and its pad
    found = run(endpointer, [SPEECH], first=9)
    assert found == [DraftVoid(0)]
    found = run(endpointer, [QUIET] * 10, first=10)
    [second, final] = [d for d in found if isinstance(d, Due)]
    assert (second.kind, final.kind, second.end, final.end) == ("draft", "final", 12 * W, 12 * W)


def test_no_draft_while_the_session_says_not_now() -> None:
    endpointer = Endpointer(settings(pad=2 * W, drafts=True))
    assert dues(run(endpointer, [SPEECH] * 5 + [QUIET] * 4, drafts=False), "draft") == []
    assert len(dues(run(endpointer, [QUIET], first=9), "draft")) == 1  # allowed again: asked now


def test_the_length_limit_cuts_at_the_quietest_stretch_and_the_next_utterance_starts_there() -> None:
    limit = 100 * W
    endpointer = Endpointer(settings(max_samples=limit))
    probs = [SPEECH] * 150  # one cut: the next utterance reaches its limit at 181
    for i in range(79, 84):  # a pause within the last 2 s before the limit
        probs[i] = 0.4
    found = run(endpointer, probs)
    [first] = dues(found, "final")
    assert (first.num, first.start, first.end, first.speech_end) == (0, 0, 81 * W, None)
    assert endpointer.open_num == 1 and endpointer.open_start == 81 * W


def test_finalize_ends_the_open_utterance_where_told_and_nothing_when_none_is_open() -> None:
    endpointer = Endpointer(settings())
    run(endpointer, [SPEECH] * 5)
    [final] = endpointer.end_now(5 * W + 100, earliest=0)
    assert (final.kind, final.end, final.speech_end) == ("final", 5 * W + 100, None)
    assert endpointer.end_now(10 * W, earliest=0) == []


@pytest.mark.parametrize(("probs", "expected"), [([0.9] * 10, 9), ([0.9, 0.9, 0.0, 0.9, 0.9, 0.2, 0.2, 0.2, 0.2, 0.2, 0.9, 0.9, 0.9], 7)])
def test_quietest_point_prefers_a_pause_to_one_quiet_window(probs: list[float], expected: int) -> None:
    windows = [(i * W, p) for i, p in enumerate(probs)]
    assert quietest_point(windows, 0, len(probs) * W) == expected * W


def test_progress_says_who_speaks_where_the_speech_was_heard_and_what_is_settled() -> None:
    # Covered from sample 0, but the speech was first heard at window 6 (less the one-window pad).
    endpointer = Endpointer(settings(lookback=20 * W, pad=W))
    assert endpointer.progress(owed=None) == Progress(speaking=None, heard_from=0, last_end=0, settled_below=0, opened=0)
    run(endpointer, [QUIET] * 6 + [SPEECH] * 5)
    assert endpointer.progress(owed=None) == Progress(speaking=0, heard_from=5 * W, last_end=0, settled_below=0, opened=1)
    run(endpointer, [QUIET] * 10, first=11)
    progress = endpointer.progress(owed=0)  # ended, its final still owed
    assert (progress.speaking, progress.last_end, progress.settled_below, progress.opened) == (None, 12 * W, 0, 1)  # the pad after the speech
    assert endpointer.progress(owed=None).settled_below == 1  # its final is out (or it held no words)
