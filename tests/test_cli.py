"""The `whisperwire` command as a user runs it: a real `serve` process, `stream`, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

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
    assert word_error_rate(clip.reference, text) <= 0.1, text


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


def test_serve_with_a_missing_model_exits_with_a_clear_message(tmp_path: Path) -> None:
    done = subprocess.run(whisperwire("serve", "--model", str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "could not load model" in done.stderr and "model.bin" in done.stderr


@pytest.mark.parametrize("deployment", ["process", "ray"])
def test_sigterm_flushes_buffered_speech_then_closes_1001(clips, deployment: str, tmp_path: Path) -> None:
    port = free_port()
    serve = ["serve", "--port", str(port)]
    if deployment == "ray":
        pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the test extra installs whisperwire[ray])")
        serve.append("--ray")  # a one-machine Ray cluster of its own
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


def test_api_keys_come_from_repeated_flags_and_the_environment(monkeypatch) -> None:
    from whisperwire.cli import _parser, api_keys_with_env

    monkeypatch.setenv("WHISPERWIRE_API_KEY", "env-one, env-two")
    args = _parser().parse_args(["serve", "--api-key", "flag", "--api-key", "env-one"])
    assert api_keys_with_env(args.api_key) == ("flag", "env-one", "env-two")
