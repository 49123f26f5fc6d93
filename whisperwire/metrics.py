"""The server's Prometheus metrics (docs/serving.md lists them).

Each app has a registry of its own rather than the process-wide default, so several servers in
one process (the tests) do not share counts. What is a live quantity — sessions open, jobs
waiting, partials the scheduler replaced — is read when scraped rather than mirrored by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Finals take a few hundred milliseconds on an idle CPU and seconds under load.
_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class LiveState:
    """What the server is doing right now, read at each scrape."""

    active_sessions: int
    queue_depth: int
    partials_superseded: int
    drafts: dict[str, int]  # by outcome: promoted, withdrawn, wasted (scheduler.SchedulerStats)
    finals_batched: int
    finals_again: int
    partials_dropped_slow_client: int
    send_buffer_bytes: int


class _Live(Collector):
    def __init__(self, read: Callable[[], LiveState]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = self._read()
        yield GaugeMetricFamily("whisperwire_active_sessions", "WebSocket sessions open", value=state.active_sessions)
        yield GaugeMetricFamily(
            "whisperwire_queue_depth", "inference jobs waiting for the worker", value=state.queue_depth
        )
        yield GaugeMetricFamily(
            "whisperwire_send_buffer_bytes",
            "bytes of messages waiting for clients that have not read them yet",
            value=state.send_buffer_bytes,
        )
        skipped = CounterMetricFamily(
            "whisperwire_partials_skipped",
            "partial transcripts not delivered: replaced by a newer one while waiting (superseded) "
            "or dropped from the send buffer of a client that does not read (slow_client)",
            labels=["reason"],
        )
        skipped.add_metric(["superseded"], state.partials_superseded)
        skipped.add_metric(["slow_client"], state.partials_dropped_slow_client)
        yield skipped
        drafts = CounterMetricFamily(
            "whisperwire_drafts",
            "finals begun when the silence began, by outcome: promoted (its final took it over while "
            "it waited or ran), withdrawn (the speech went on before it ran: free), wasted (the speech "
            "went on after it began). A draft done before its final was due is counted in "
            "whisperwire_inference_seconds{kind=\"draft\"}, as the wasted ones are",
            labels=["outcome"],
        )
        for outcome, count in state.drafts.items():
            drafts.add_metric([outcome], count)
        yield drafts
        yield CounterMetricFamily(
            "whisperwire_finals_batched",
            "finals whose encoder window was encoded in one call with other waiting finals' (--batch)",
            value=state.finals_batched,
        )
        yield CounterMetricFamily(
            "whisperwire_finals_recognised_again",
            "finals recognised a second time on their utterance's audio alone, the first recognition "
            "(with the previous words as context) having come back empty after a partial showed words",
            value=state.finals_again,
        )


class Metrics:
    CONTENT_TYPE = CONTENT_TYPE_LATEST

    def __init__(self, live: Callable[[], LiveState]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Live(live))
        self.audio_received = Counter(
            "whisperwire_audio_received_seconds",
            "seconds of audio received from clients, at their declared sample rate",
            registry=self.registry,
        )
        self.utterances_finalised = Counter(
            "whisperwire_utterances_finalised", "final transcripts sent", registry=self.registry
        )
        self.final_latency = Histogram(
            "whisperwire_final_latency_seconds",
            "from the end of an utterance's audio (the session asking for its final) to the final sent",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.final_stage = Histogram(
            "whisperwire_final_stage_seconds",
            "where a final's time went after it was asked for: queue (waiting for a worker), "
            "recognition (its engine call, the part after it was asked for; a draft may have begun "
            "before), encode (the encoder's share of that call, all of it), send (from the result, "
            "or from the asking if a draft was already done, to the final written to the socket)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "whisperwire_inference_seconds",
            "time inside the engine per job",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "whisperwire_rejected_sessions",
            "WebSocket handshakes refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "whisperwire_errors", "error messages sent to clients, by error code", ["code"], registry=self.registry
        )

    def observe_inference(self, kind: str, seconds: float) -> None:
        self.inference.labels(kind=kind).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
