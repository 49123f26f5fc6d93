"""Faults: clients that vanish or stop reading, an engine that raises or hangs, drains that run
out of time, and the short soak. Real server, real model, real speech; where a fault has to be
made (a failing or slow engine), it wraps the real engine and fails only the session that asks."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.conftest import read_wav, start_server
from tests.streaming import Received, converse, s16le, stream, word_error_rate
from tests.test_cli import free_port, wait_healthy, whisperwire

REPO = Path(__file__).resolve().parents[1]
SILENCE = np.zeros(16_000, dtype=np.float32)


def scrape(http: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, labels): value}."""
    with urllib.request.urlopen(f"{http}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(http: str, name: str, **labels: str) -> float:
    return scrape(http).get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_for_metric(http: str, name: str, predicate: Any, timeout: float = 60.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(metric, http, name, **labels)
        if predicate(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- vanishing clients


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def settled_rss_kb(pid: int) -> int:
    """RSS once transient buffers are gone: inference still finishing for a vanished session
    and the allocators' working space make single readings swing by tens of MB."""
    samples = []
    for _ in range(6):
        time.sleep(0.5)
        samples.append(rss_kb(pid))
    return min(samples)


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def vanish_mid_utterance(url: str, speech: bytes) -> None:
    """Metadata, seconds of speech that has not ended, a moment for a partial to be asked for,
    then the TCP connection is dropped without a close frame."""
    async with connect(url, compression=None, open_timeout=60) as ws:
        await ws.send(json.dumps({"streaming_params": {"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.1}}))
        for offset in range(0, len(speech), 16_000):
            await ws.send(speech[offset : offset + 16_000])
        await asyncio.sleep(0.05)
        ws.transport.abort()


def test_200_abrupt_disconnects_leave_no_sessions_memory_or_descriptors(clips, tmp_path: Path) -> None:
    port = free_port()
    http = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    # Ten at a time, more than the start-up estimate admits on a small machine: this is about
    # what sessions leave behind, so admission goes by measurement alone (tests/test_overload.py).
    serve = whisperwire("serve", "--port", str(port), "--no-access-log", "--stream-cost", "0")
    process = subprocess.Popen(serve, stdout=log, stderr=log)
    # 4 s of speech cut mid-sentence: each session holds ≥ 256 KB of samples while it lives.
    speech = s16le(read_wav(clips["en_librispeech_1221-135766-0001.wav"].path)[: 4 * 16_000])
    url = f"ws://127.0.0.1:{port}/v1/websocket"

    async def wave(count: int) -> None:
        for start in range(0, count, 10):
            await asyncio.gather(*(vanish_mid_utterance(url, speech) for _ in range(min(10, count - start))))
        # Every session is gone and no work of theirs is left waiting.
        assert await wait_for_metric(http, "whisperwire_active_sessions", lambda v: v == 0) == 0
        assert await wait_for_metric(http, "whisperwire_queue_depth", lambda v: v == 0) == 0

    try:
        wait_healthy(port, process)
        asyncio.run(wave(60))  # warm-up: allocator pools and caches reach their working size
        rss_before, fds_before = settled_rss_kb(process.pid), open_fds(process.pid)
        superseded_before = metric(http, "whisperwire_partials_skipped_total", reason="superseded")
        asyncio.run(wave(200))
        rss_after, fds_after = settled_rss_kb(process.pid), open_fds(process.pid)
        # A session kept alive holds its samples, VAD state and buffers: several MB each when
        # measured (200 of them: hundreds of MB). Noise between waves stays under the margin.
        assert rss_after - rss_before < 40_000, (rss_before, rss_after)
        assert fds_after - fds_before <= 2, (fds_before, fds_after)
        # Their waiting partials were dropped rather than run for nobody.
        assert metric(http, "whisperwire_partials_skipped_total", reason="superseded") > superseded_before
        # And the server still serves.
        received = asyncio.run(stream(url, {}, s16le(np.concatenate([read_wav(clips["en_timit_LDC93S1.wav"].path), SILENCE]))))
        assert word_error_rate(clips["en_timit_LDC93S1.wav"].reference, received.text) <= 0.2
    finally:
        process.kill()
        process.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


# --------------------------------------------------------------------------- a client that never reads


class NonReader:
    """A WebSocket client on a raw socket with a tiny receive buffer that reads nothing until told.

    websockets' asyncio client keeps reading in the background; this one does not.
    """

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        host, port = url.split("//")[1].split("/")[0].split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(30)
        self.sock.connect((host, int(port)))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while not any(isinstance(e, Response) for e in self.protocol.events_received()):
            self.protocol.receive_data(self.sock.recv(65536))

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def send(self, frames: list[str | bytes]) -> None:
        for frame in frames:
            if isinstance(frame, str):
                self.protocol.send_text(frame.encode())
            else:
                self.protocol.send_binary(frame)
        self._flush()

    def read_all(self) -> Received:
        """Now read: everything the server queued, then its close."""
        received = Received()
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                break
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    received.messages.append(json.loads(event.data))
                elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                    close = Close.parse(event.data)
                    received.close_code, received.close_reason = close.code, close.reason
            self._flush_quietly()
        self.sock.close()
        return received

    def _flush_quietly(self) -> None:
        try:
            self.sock.sendall(b"".join(self.protocol.data_to_send()))
        except OSError:
            pass


async def test_a_client_that_does_not_read_loses_partials_first_then_is_closed_1008(engine, vad, clips) -> None:
    limit = 256 * 1024
    clip = clips["en_librispeech_1221-135766-0001.wav"]
    with start_server(engine, vad, send_buffer_bytes=limit) as running:
        http = running.http
        slow = NonReader(running.url)
        metadata = {"streaming_params": {"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.1}}
        slow.send([json.dumps(metadata)])
        junk = ['{"type": "junk"}'] * 200  # each gets an unknown_control error back, ~250 bytes

        async def fill_until_blocked() -> None:
            # Kernel buffers take a few MB; once they are full the server's own buffer fills.
            # Blocked means: a backlog that does not shrink for a second with nothing new sent.
            for _ in range(400):
                slow.send(junk)
                await asyncio.sleep(0.05)
                backlog = await asyncio.to_thread(metric, http, "whisperwire_send_buffer_bytes")
                if backlog > 0:
                    await asyncio.sleep(1.0)
                    if await asyncio.to_thread(metric, http, "whisperwire_send_buffer_bytes") >= backlog:
                        return
            raise AssertionError("the server never had to buffer for the non-reader")

        async def the_non_reader() -> None:
            await fill_until_blocked()
            # Speech while blocked: its partials wait in the send buffer behind the errors.
            speech = s16le(read_wav(clip.path)[: 6 * 16_000])
            for offset in range(0, len(speech), 6_400):
                slow.send([speech[offset : offset + 6_400]])
                await asyncio.sleep(0.05)
            # (All within the 60 s idle limit: the session must end for being slow, not idle.)
            ran = await wait_for_metric(http, "whisperwire_inference_seconds_count", lambda v: v >= 1, kind="partial", timeout=30)
            assert ran >= 1
            await asyncio.sleep(0.5)  # its result reaches the session and the send buffer
            # More errors than the buffer holds: partials go first, then the client.
            for _ in range(20):
                slow.send(junk)
                await asyncio.sleep(0.05)
            too_slow = await wait_for_metric(http, "whisperwire_errors_total", lambda v: v == 1, code="client_too_slow", timeout=20)
            assert too_slow == 1

        healthy_audio = s16le(np.concatenate([read_wav(clips["en_timit_LDC93S1.wav"].path), SILENCE]))
        _, healthy = await asyncio.gather(the_non_reader(), stream(running.url, {}, healthy_audio, speed=1.0))
        # The other client was served in real time meanwhile.
        assert healthy.close_code == 1000 and word_error_rate(clips["en_timit_LDC93S1.wav"].reference, healthy.text) <= 0.2
        assert metric(http, "whisperwire_partials_skipped_total", reason="slow_client") >= 1

        received = await asyncio.to_thread(slow.read_all)
        assert received.close_code == 1008
        assert received.errors[-1]["error"]["code"] == "client_too_slow"
        assert f"more than {limit} bytes" in received.errors[-1]["error"]["message"]
        # Every error before it arrived, in order; the partials waiting among them did not.
        assert {e["error"]["code"] for e in received.errors[:-1]} == {"unknown_control"}
        assert received.partials == []
        assert await wait_for_metric(http, "whisperwire_send_buffer_bytes", lambda v: v == 0) == 0


def test_the_send_buffer_drops_the_oldest_partials_and_never_a_final() -> None:
    from whisperwire.connection import Outbox

    async def scenario() -> None:
        outbox = Outbox(limit=100)
        assert outbox.put("p" * 40, partial=True) == 0
        assert outbox.put("f" * 40, final_num=0) == 0
        assert outbox.put("q" * 40, partial=True) == 1  # 120 > 100: the oldest partial goes
        assert not outbox.overflowing
        assert outbox.put("g" * 40, final_num=1) == 1  # the other partial goes too
        assert not outbox.overflowing and outbox.size == 80
        assert outbox.put("h" * 40, final_num=2) == 0  # finals alone over the bound
        assert outbox.overflowing
        outbox.close(1008, "too slow")
        sent = [await outbox.get() for _ in range(4)]
        assert [getattr(item, "final_num", None) for item in sent] == [0, 1, 2, None]
        assert outbox.size == 0

    asyncio.run(scenario())


# --------------------------------------------------------------------------- engines that fail or hang


class FaultyEngine:
    """The real engine, except for sessions whose prompt asks for a fault."""

    def __init__(self, engine: Any, hang_s: float = 0.0) -> None:
        self._engine = engine
        self.info = engine.info
        self._hang_s = hang_s

    def count_tokens(self, text: str) -> int:
        if text == "break the tokenizer":  # a bug outside inference, while reading metadata
            raise TypeError("injected tokenizer failure")
        return self._engine.count_tokens(text)

    def detect_language(self, audio: np.ndarray, language_options: tuple[str, ...] = ()) -> tuple[str, float]:
        return self._engine.detect_language(audio, language_options)

    def transcribe(self, audio: np.ndarray, options: Any) -> Any:
        if options.prompt == "fail":
            raise RuntimeError("injected engine failure")
        if options.prompt == "hang":
            time.sleep(self._hang_s)
        return self._engine.transcribe(audio, options)


async def test_an_inference_that_raises_closes_that_session_1011_with_its_id(engine, vad, clips, caplog) -> None:
    clip = clips["en_timit_LDC93S1.wav"]
    audio = s16le(np.concatenate([read_wav(clip.path), SILENCE]))
    with start_server(FaultyEngine(engine), vad) as running:
        failing, healthy = await asyncio.gather(
            stream(running.url, {"whisper_params": {"prompt": "fail"}}, audio),
            stream(running.url, {}, audio),
        )
        [error] = failing.errors
        assert error["error"]["code"] == "internal_error" and failing.close_code == 1011
        session_id = error["error"]["message"].rsplit("session ", 1)[1]
        assert len(session_id) == 12
        # The log carries the same id, so an operator can find what the client saw.
        assert any(session_id in record.getMessage() and record.exc_info for record in caplog.records)
        assert word_error_rate(clip.reference, healthy.text) <= 0.2
        after = await stream(running.url, {}, audio)
        assert word_error_rate(clip.reference, after.text) <= 0.2 and after.close_code == 1000
        assert metric(running.http, "whisperwire_errors_total", code="internal_error") == 1


async def test_an_unexpected_exception_in_a_session_costs_only_that_session(engine, vad, clips) -> None:
    clip = clips["en_timit_LDC93S1.wav"]
    audio = s16le(np.concatenate([read_wav(clip.path), SILENCE]))
    with start_server(FaultyEngine(engine), vad) as running:
        broken, healthy = await asyncio.gather(
            converse(running.url, [json.dumps({"whisper_params": {"prompt": "break the tokenizer"}})]),
            stream(running.url, {}, audio),
        )
        [error] = broken.errors
        assert error["error"]["code"] == "internal_error" and broken.close_code == 1011
        assert "session " in error["error"]["message"]
        assert word_error_rate(clip.reference, healthy.text) <= 0.2 and healthy.close_code == 1000


async def test_a_drain_that_runs_out_of_time_still_closes_every_session_1001(engine, vad, clips) -> None:
    speech = s16le(read_wav(clips["en_new_home_in_the_stars.wav"].path)[: 3 * 16_000])  # speech goes on
    metadata = {"streaming_vad_config": {"min_silence_duration_ms": 5000}, "whisper_params": {"prompt": "hang"}}
    with start_server(FaultyEngine(engine, hang_s=5.0), vad, drain_timeout_s=1.0) as running:

        async def drain_soon() -> float:
            await asyncio.sleep(1.0)  # the session has its audio in
            began = time.monotonic()
            await asyncio.to_thread(running.run_on_server, running.app.state.whisperwire.drain())
            return time.monotonic() - began

        stuck, took = await asyncio.gather(converse(running.url, [json.dumps(metadata), speech]), drain_soon())
        # Its final could not be had in time; the close still came, 1001, once the time was up.
        assert stuck.close_code == 1001 and stuck.messages == []
        assert 1.0 <= took < 1.0 + 2.0, took
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{running.http}/ready", timeout=5)
        assert refused.value.code == 503
        assert json.loads(refused.value.read()) == {"ready": False, "reasons": ["draining"]}


# --------------------------------------------------------------------------- the soak, short


def test_short_soak_every_utterance_gets_exactly_one_final(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    # 20 s is too short to tell a leak from two model replicas reaching their working memory
    # (their warm point is 5 s in; measured growth after it 5-58 MB in such runs): leaks are
    # the 200-disconnect test's and the long soak's (BENCHMARKS.md) to find; this one is about
    # finals, with a margin that still fails a session's audio kept alive per clip.
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--streams", "2", "--seconds", "20", "--session-clips", "3",
         "--rss-every", "1", "--rss-margin-mb", "100", "--json", str(report_path), "--server-log", str(tmp_path / "server.log")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["problems"] == []
    assert report["clips"] >= 4 and report["finals"] >= report["clips"]
    assert report["server_finals_metric"] == report["finals"]
    assert report["server_exit"] == 0
