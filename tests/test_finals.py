"""The finals queue alone: what is owed, in number order, whatever order results come in."""

from __future__ import annotations

import numpy as np

from whisperwire.endpointer import Due
from whisperwire.finals import FinalsQueue
from whisperwire.values import DecodeOptions, InferenceRequest, Result


def due(num: int, start: int = 0, end: int = 1000) -> Due:
    return Due("final", num, start, end, ())


def request(num: int, kind: str = "final") -> InferenceRequest:
    return InferenceRequest("s", kind, num, np.zeros(10, np.float32), 0.0, DecodeOptions(language="en"))  # type: ignore[arg-type]


RESULT = Result(segments=(), language="en", language_prob=None)


def test_results_in_any_order_leave_in_number_order() -> None:
    queue = FinalsQueue()
    asked = [request(n) for n in range(3)]
    for n, r in enumerate(asked):
        queue.add(due(n, end=1000 * (n + 1)), r)
    queue.done(asked[2], RESULT)
    queue.done(asked[1], RESULT)
    assert list(queue.ready()) == [] and len(queue) == 3 and queue.oldest_end == 1000
    queue.done(asked[0], RESULT)
    assert [r.transcription_num for r, _ in queue.ready()] == [0, 1, 2]
    assert not queue and queue.oldest_end is None


def test_a_held_final_is_asked_for_only_when_every_earlier_final_is_out() -> None:
    queue = FinalsQueue()
    first = request(0)
    queue.add(due(0), first)
    queue.add(due(1, start=5000, end=8000), None)
    assert queue.next_held() is None and queue.held_start == 5000
    queue.done(first, RESULT)
    assert [r for r, _ in queue.ready()] == [first]
    held = queue.next_held()
    assert held is not None and held.num == 1
    second = request(1)
    queue.asked(second)
    assert queue.next_held() is None and queue.held_start is None
    queue.done(second, RESULT)
    assert [r for r, _ in queue.ready()] == [second]


def test_an_owed_partial_leaves_before_its_final_and_the_final_waits_for_it() -> None:
    queue = FinalsQueue()
    final, partial = request(0), request(0, "partial")
    queue.add(due(0), final)
    queue.owe_partial(partial)
    assert queue.owes(partial) and not queue.owes(request(0, "partial"))
    queue.done(final, RESULT)
    assert list(queue.ready()) == []
    queue.done(partial, RESULT)
    assert [(r.kind, r.transcription_num) for r, _ in queue.ready()] == [("partial", 0), ("final", 0)]


def test_a_number_a_partial_went_out_for_is_owed_its_final() -> None:
    queue = FinalsQueue()
    queue.partial_sent(4)
    assert queue.owes_final(4) and not queue.owes_final(5)
    queue.forget_partial(4)
    assert not queue.owes_final(4)
