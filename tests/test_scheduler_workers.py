"""The scheduler with several workers, as the Ray Serve ingress runs it.

The engine here is a stand-in whose calls wait until the test lets them finish, so which jobs
run at the same time is known exactly; the real engines run under it in tests/test_server.py
and tests/test_ray.py.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import numpy as np
import pytest

from whisperwire.engine import DecodeOptions, ModelInfo, Result, SegmentResult
from whisperwire.scheduler import Scheduler
from whisperwire.session import InferenceRequest


class GatedEngine:
    """Each transcribe() call announces itself, then waits for its session's gate."""

    info = ModelInfo(name="stand-in", multilingual=False, languages=frozenset({"en"}))

    def __init__(self) -> None:
        self.running: list[tuple[str, str, int]] = []
        self.gates: dict[str, threading.Event] = {}
        self.changed = threading.Condition()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def detect_language(self, audio: np.ndarray, language_options: tuple[str, ...] = ()) -> tuple[str, float]:
        return "en", 1.0

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result:
        session, kind, num = options.prompt.split(":")  # the test names each job in its prompt
        job = (session, kind, int(num))
        with self.changed:
            self.running.append(job)
            self.changed.notify_all()
        self.gates.setdefault(session, threading.Event()).wait(timeout=30)
        with self.changed:
            self.running.remove(job)
        # Some words: a partial that came back empty would be decoded once more (transcribe()).
        words = SegmentResult(" Gated.", 0.0, 1.0, -0.2, 1, 0.01, 1.0, None)
        return Result(segments=(words,), language="en", language_prob=None)

    def wait_running(self, count: int) -> list[tuple[str, str, int]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.running) >= count, timeout=30), self.running
            return sorted(self.running)


def request(session: str, kind: str, num: int) -> InferenceRequest:
    options = DecodeOptions(language="en", prompt=f"{session}:{kind}:{num}")
    return InferenceRequest(session, kind, num, np.zeros(1600, dtype=np.float32), 0.0, options)  # type: ignore[arg-type]


@pytest.fixture
def engine() -> GatedEngine:
    return GatedEngine()


async def test_two_workers_run_two_sessions_at_once(engine: GatedEngine) -> None:
    scheduler = Scheduler(engine, workers=2)
    scheduler.start()
    try:
        a, b = scheduler.submit(request("a", "final", 0)), scheduler.submit(request("b", "final", 0))
        assert await asyncio.to_thread(engine.wait_running, 2) == [("a", "final", 0), ("b", "final", 0)]
        for gate in ("a", "b"):
            engine.gates.setdefault(gate, threading.Event()).set()
        await asyncio.wait_for(asyncio.gather(a, b), 30)
    finally:
        for gate in engine.gates.values():
            gate.set()
        await asyncio.to_thread(scheduler.stop)


async def test_a_sessions_next_partial_waits_for_its_running_one(engine: GatedEngine) -> None:
    scheduler = Scheduler(engine, workers=2)
    scheduler.start()
    try:
        first = scheduler.submit(request("a", "partial", 0))
        assert await asyncio.to_thread(engine.wait_running, 1) == [("a", "partial", 0)]
        second = scheduler.submit(request("a", "partial", 0))  # more audio of the same utterance
        other = scheduler.submit(request("b", "partial", 0))
        # The free worker takes the other session's partial, not a's second one.
        assert await asyncio.to_thread(engine.wait_running, 2) == [("a", "partial", 0), ("b", "partial", 0)]
        engine.gates.setdefault("a", threading.Event()).set()
        engine.gates.setdefault("b", threading.Event()).set()
        await asyncio.wait_for(asyncio.gather(first, second, other), 30)
        assert scheduler.stats.partials_done == 3
    finally:
        for gate in engine.gates.values():
            gate.set()
        await asyncio.to_thread(scheduler.stop)


def test_workers_must_be_at_least_one(engine: GatedEngine) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Scheduler(engine, workers=0)


async def test_a_final_joins_its_draft_running_on_either_worker(engine: GatedEngine) -> None:
    scheduler = Scheduler(engine, workers=2)
    scheduler.start()
    try:
        busy = scheduler.submit(request("b", "final", 0))
        draft_request = request("a", "draft", 0)
        draft = scheduler.submit(draft_request)
        assert await asyncio.to_thread(engine.wait_running, 2) == [("a", "draft", 0), ("b", "final", 0)]
        # The silence held: the final is the draft's exact audio, recognised once.
        final = scheduler.submit(replace(draft_request, kind="final", replaces=draft_request.request_id))
        engine.gates.setdefault("a", threading.Event()).set()
        engine.gates.setdefault("b", threading.Event()).set()
        await asyncio.wait_for(asyncio.gather(busy, draft, final), 30)
        assert (scheduler.stats.drafts_promoted, scheduler.stats.finals_done) == (1, 2)
        assert scheduler.load().running == 0
    finally:
        for gate in engine.gates.values():
            gate.set()
        await asyncio.to_thread(scheduler.stop)
