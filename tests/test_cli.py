"""The `whisperwire` command as a user runs it: a real `serve` process, `stream`, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import read_wav
from tests.streaming import s16le, word_error_rate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def whisperwire(*args: str) -> list[str]:
    return [sys.executable, "-m", "whisperwire.cli", *args]


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited early: {process.stderr.read() if process.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("serve did not become healthy")


@pytest.fixture(scope="module")
def serve_process() -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    process = subprocess.Popen(
        whisperwire("serve", "--port", str(port), "--drain-timeout", "20"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_healthy(port, process)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_stream_command_prints_finals(serve_process, clips) -> None:
    _, port = serve_process
    clip = clips["en_librispeech_1089-134686-0001.wav"]
    done = subprocess.run(
        whisperwire("stream", str(clip.path), "--url", f"ws://127.0.0.1:{port}/v1/websocket", "--speed", "0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    finals = [line for line in done.stdout.splitlines() if line.startswith("[final")]
    assert finals, done.stdout
    text = " ".join(line.split("] ", 1)[1] for line in finals)
    assert word_error_rate(clip.reference, text) <= 0.15, text  # 18 words: two may differ by CPU


def test_stream_command_json_prints_raw_messages(serve_process, clips) -> None:
    _, port = serve_process
    clip = clips["en_timit_LDC93S1.wav"]
    done = subprocess.run(
        whisperwire("stream", str(clip.path), "--url", f"ws://127.0.0.1:{port}/v1/websocket", "--speed", "0", "--json"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert messages and all(m["type"] == "transcription" for m in messages)
    assert messages[-1]["is_final"] is True


def test_stream_at_full_speed_with_partials_gets_a_partial_before_each_final(serve_process, clips) -> None:
    # The whole file arrives at once: each utterance ends before any of its partials is back,
    # and the server still owes its latest partial before its final (docs/protocol.md).
    _, port = serve_process
    clip = clips["en_jfk_padded_3s_5s_silence.wav"]
    command = ["stream", str(clip.path), "--url", f"ws://127.0.0.1:{port}/v1/websocket", "--speed", "0", "--partials", "--json"]
    done = subprocess.run(whisperwire(*command), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    finals = [m for m in messages if m["is_final"]]
    assert len(finals) >= 3, messages
    for final in finals:
        before = [m for m in messages[: messages.index(final)] if m["transcription_num"] == final["transcription_num"]]
        assert before and not before[-1]["is_final"] and before[-1]["transcript"], messages
        assert all(m["transcription_num"] <= final["transcription_num"] for m in messages[: messages.index(final)])
    assert word_error_rate(clip.reference, " ".join(f["transcript"] for f in finals)) <= 0.25


def test_stream_command_without_a_server_says_so(clips) -> None:
    done = subprocess.run(
        whisperwire("stream", str(clips["en_timit_LDC93S1.wav"].path), "--url", f"ws://127.0.0.1:{free_port()}/v1/websocket"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "serve" in done.stderr


def test_serve_refuses_to_run_open_on_a_public_address() -> None:
    done = subprocess.run(whisperwire("serve", "--host", "0.0.0.0"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--api-key" in done.stderr and "--allow-open" in done.stderr


def test_serve_on_a_busy_port_exits_with_one_line_before_loading_anything() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(whisperwire("serve", "--port", str(port)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "NO API KEYS" not in line]
    assert lines == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"], done.stderr
    assert "listening on" not in done.stderr


def test_serve_with_a_missing_model_exits_with_a_clear_message(tmp_path: Path) -> None:
    done = subprocess.run(whisperwire("serve", "--model", str(tmp_path), "--port", str(free_port())), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "could not load model" in done.stderr and "model.bin" in done.stderr


def test_serve_with_corrupt_weights_exits_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.bin").write_bytes(b"not a CTranslate2 model" * 100)
    done = subprocess.run(whisperwire("serve", "--model", str(tmp_path), "--port", str(free_port())), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"error: could not load model {str(tmp_path)!r}" in done.stderr and "model binary version" in done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_drains_every_session_then_exits(clips, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        # Admission by measurement alone: three streams at once are over the start-up estimate
        # of a slow 2-core machine, and this is about draining, not admission.
        serve = whisperwire("serve", "--port", str(port), "--drain-timeout", "30", "--stream-cost", "0")
        process = subprocess.Popen(serve, stdout=sink, stderr=sink)
    # Three sessions, each cut while its speaker is mid-sentence: no end of speech yet.
    names = {"en_new_home_in_the_stars.wav": "stars", "en_harvard_birch_canoe.wav": "canoe", "en_jfk_inaugural_11s.wav": "fellow"}
    hold = {"streaming_vad_config": {"min_silence_duration_ms": 5000}}
    url = f"ws://127.0.0.1:{port}/v1/websocket"

    async def talk(name: str, ready: asyncio.Event) -> tuple[list[dict], int | None]:
        async with connect(url) as ws:
            await ws.send(json.dumps(hold))
            await ws.send(s16le(read_wav(clips[name].path)[: int(3.0 * 16_000)]))
            ready.set()
            messages = [json.loads(raw) async for raw in ws]
            return messages, ws.close_code

    def readiness() -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    async def drain_while_watching() -> tuple[list, list[tuple[int, dict]], int, float]:
        ready = [asyncio.Event() for _ in names]
        talks = [asyncio.create_task(talk(name, event)) for name, event in zip(names, ready)]
        await asyncio.gather(*(event.wait() for event in ready))
        await asyncio.sleep(1.0)  # let the server take the audio in
        assert readiness() == (200, {"ready": True, "reasons": []})
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        seen = []
        while not all(t.done() for t in talks):
            seen.append(await asyncio.to_thread(readiness))
            if len(seen) == 1:  # new sessions are refused while the old ones finish
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(url):
                        pass
                refused_status = refused.value.response.status_code
            await asyncio.sleep(0.05)
        return await asyncio.gather(*talks), seen, refused_status, sent

    try:
        wait_healthy(port, process)
        results, seen, refused_status, sent = asyncio.run(drain_while_watching())
        assert process.wait(timeout=30) == 0
        exited = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert seen and seen[0] == (503, {"ready": False, "reasons": ["draining"]}), seen
    assert refused_status == 503
    for (messages, code), word in zip(results, names.values()):
        assert code == 1001
        [final] = messages  # the buffered speech got its one final before the close
        assert final["is_final"] and word in final["transcript"].lower(), final
    assert exited < 30, exited  # well inside the drain timeout


def test_serve_admission_and_speed_flags_reach_the_server(clips) -> None:
    port = free_port()
    flags = ["--max-sessions", "1", "--encoder-window", "full", "--no-draft-finals"]
    process = subprocess.Popen(whisperwire("serve", "--port", str(port), *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(port, process)
        url = f"ws://127.0.0.1:{port}/v1/websocket"
        audio = s16le(np.concatenate([read_wav(clips["en_timit_LDC93S1.wav"].path), np.zeros(16_000, np.float32)]))

        async def two_clients() -> tuple[dict, int | None, list[dict]]:
            async with connect(url) as first:
                await first.send("{}")
                async with connect(url) as second:
                    refusal = json.loads(await second.recv())
                    await second.wait_closed()
                await first.send(audio)
                await first.send('{"type": "terminate"}')
                return refusal, second.close_code, [json.loads(raw) async for raw in first]

        refusal, code, messages = asyncio.run(two_clients())
        assert refusal["error"]["code"] == "server_busy" and code == 1013
        assert "the limit is 1" in refusal["error"]["message"]
        assert [m["is_final"] for m in messages] == [True] and "greasy" in messages[0]["transcript"].lower()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_context_prompt_is_off_unless_asked() -> None:
    from whisperwire.cli import _parser
    from whisperwire.settings import load_settings

    def context_prompt(*argv: str, environ: dict[str, str] | None = None) -> bool:
        args = vars(_parser().parse_args(["serve", *argv]))
        args.pop("run")
        return load_settings(args, environ or {}).context_prompt

    assert context_prompt() is False
    assert context_prompt("--context-prompt") is True
    assert context_prompt(environ={"WHISPERWIRE_CONTEXT_PROMPT": "on"}) is True
    assert context_prompt("--no-context-prompt", environ={"WHISPERWIRE_CONTEXT_PROMPT": "on"}) is False


def test_sigterm_on_ray_flushes_buffered_speech_then_closes_1001(clips, tmp_path: Path) -> None:
    # As test_sigterm_drains_every_session_then_exits, for `serve --ray`: a one-machine Ray
    # cluster of its own, an ingress and a recognizer replica.
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the test extra installs whisperwire[ray])")
    port = free_port()
    serve = ["serve", "--port", str(port), "--ray"]
    # Ray's replicas log to the command's stderr: a file, not a pipe nobody drains.
    with open(tmp_path / "stderr", "w+") as stderr:
        process = subprocess.Popen(whisperwire(*serve), stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        try:
            _sigterm_while_speaking(process, port, clips["en_new_home_in_the_stars.wav"])
        except AssertionError:
            stderr.seek(0)
            print(stderr.read()[-5000:])  # shown with the failure
            raise
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _sigterm_while_speaking(process: subprocess.Popen, port: int, clip) -> None:  # noqa: ANN001 - a Clip
    wait_healthy(port, process, timeout=300)
    speech = read_wav(clip.path)[: int(3.0 * 16_000)]  # cut while speech goes on: no end of speech

    async def talk_then_terminate_server() -> tuple[list[dict], int | None]:
        async with connect(f"ws://127.0.0.1:{port}/v1/websocket") as ws:
            await ws.send(json.dumps({"streaming_vad_config": {"min_silence_duration_ms": 5000}}))
            await ws.send(s16le(speech))
            await asyncio.sleep(1.0)  # let the server take the audio in
            process.send_signal(signal.SIGTERM)
            messages = [json.loads(raw) async for raw in ws]
            return messages, ws.close_code

    messages, code = asyncio.run(talk_then_terminate_server())
    assert code == 1001
    [final] = messages
    assert final["is_final"] and "stars" in final["transcript"].lower()
    assert process.wait(timeout=60) == 0
