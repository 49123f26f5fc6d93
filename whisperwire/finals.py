"""The finals a session owes its client, in number order.

Each ended utterance gets one entry, in the order the utterances ended, which is their number
order. An entry is *held* while its recognition cannot be asked for yet (its prompt is the text
of a final not out yet), *running* once asked for, and *done* with its result. Results come
back in any order; finals leave only from the front, so messages never go back in number.

An entry may also owe a partial before its final: when audio arrives faster than real time, the
utterance can end before any of its partials came back (session.py, catch-up partials). That
partial leaves just before its final, and the final waits for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from .endpointer import Due
from .values import InferenceRequest, Result


@dataclass
class _Entry:
    due: Due
    request: InferenceRequest | None = None  # None while held
    result: Result | None = None
    partial: InferenceRequest | None = None  # a partial owed before the final
    partial_result: Result | None = None


class FinalsQueue:
    def __init__(self) -> None:
        self._entries: deque[_Entry] = deque()
        self._partial_sent: set[int] = set()  # numbers a partial went out for: their final must too

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, due: Due, request: InferenceRequest | None) -> None:
        """An utterance ended; ``request`` is its recognition, or None to hold it."""
        self._entries.append(_Entry(due, request))

    def done(self, request: InferenceRequest, result: Result) -> None:
        entry = self._entry(request.transcription_num)
        if entry is None:
            return
        if request.kind == "partial":
            if entry.partial is request:
                entry.partial_result = result
        else:
            entry.request, entry.result = request, result

    def owe_partial(self, request: InferenceRequest) -> None:
        """The final of ``request``'s utterance goes out only after this partial's result."""
        entry = self._entry(request.transcription_num)
        assert entry is not None and request.kind == "partial"
        entry.partial = request

    def owes(self, request: InferenceRequest) -> bool:
        """Whether ``request`` is a partial owed before its final."""
        entry = self._entry(request.transcription_num)
        return entry is not None and entry.partial is request

    def ready(self) -> Iterator[tuple[InferenceRequest, Result]]:
        """Pop what can go out now, in order: an owed partial once back, then its final once
        done, with every earlier final gone before."""
        while self._entries:
            entry = self._entries[0]
            if entry.partial is not None:
                if entry.partial_result is None:
                    return
                partial, result = entry.partial, entry.partial_result
                entry.partial = entry.partial_result = None
                yield partial, result
            if entry.result is None:
                return
            self._entries.popleft()
            assert entry.request is not None
            yield entry.request, entry.result

    def _entry(self, num: int) -> _Entry | None:
        return next((e for e in self._entries if e.due.num == num), None)

    def next_held(self) -> Due | None:
        """The front entry's utterance if it is held: every earlier final is out, so it can be
        asked for now (then give the request to ``asked``)."""
        if self._entries and self._entries[0].request is None:
            return self._entries[0].due
        return None

    def asked(self, request: InferenceRequest) -> None:
        self._entries[0].request = request

    @property
    def first_num(self) -> int | None:
        """The number of the oldest final still owed."""
        return self._entries[0].due.num if self._entries else None

    @property
    def oldest_end(self) -> int | None:
        """Where the audio of the oldest final still owed ends (absolute sample)."""
        return self._entries[0].due.end if self._entries else None

    @property
    def oldest_start(self) -> int | None:
        """Where the audio of the oldest final still owed starts (absolute sample)."""
        return self._entries[0].due.start if self._entries else None

    @property
    def held_start(self) -> int | None:
        """Where the audio of the first held utterance starts: it must be kept until asked."""
        return next((e.due.start for e in self._entries if e.request is None), None)

    # ------------------------------------------------------------------ partials

    def partial_sent(self, num: int) -> None:
        self._partial_sent.add(num)

    def owes_final(self, num: int) -> bool:
        """Whether a partial went out for ``num``, so its final must too, even an empty one."""
        return num in self._partial_sent

    def forget_partial(self, num: int) -> None:
        self._partial_sent.discard(num)
