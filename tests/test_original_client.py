"""The example client of the original API, run as written against whisperwire.

Its text is taken from the spec at test time; only its URL line is replaced. It runs in a
virtualenv of its own with the `websockets` it was written for (before 14: `extra_headers`),
and its `sounddevice` is the stand-in microphone playing a shared clip in real time.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AUDIO_DIR, stand_in_microphone, start_server, virtualenv_with
from tests.streaming import word_error_rate

SPEC = AUDIO_DIR.parent / "spec" / "baseten-streaming-api.txt"
REQUIREMENTS = ("websockets<14", "numpy")
API_KEY = "original-client-key"


def original_script(url: str) -> str:
    """The spec's client script from its first line to its `asyncio.run`, with `url` put in."""
    spec = SPEC.read_text(encoding="utf-8")
    start = spec.index("import asyncio\n")
    last = "asyncio.run(stream_microphone_audio(ws_url))\n"
    script = spec[start : spec.index(last, start) + len(last)]
    assert "extra_headers=headers" in script and "sd.InputStream(" in script
    script, replaced = re.subn(r"^ws_url = .*$", f'ws_url = "{url}"', script, flags=re.M)
    assert replaced == 1
    return script


@pytest.fixture(scope="session")
def old_websockets_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return virtualenv_with(request, tmp_path_factory, "original-client-venv", REQUIREMENTS)


def lines_of(process: subprocess.Popen[str]) -> Iterator[str]:
    """The process's output lines as they come; the script never ends by itself."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    while (line := lines.get(timeout=60)) is not None:
        yield line


def test_the_original_client_runs_unchanged_against_whisperwire(engine, vad, clips, tmp_path: Path, old_websockets_python: Path) -> None:
    clip = clips["en_librispeech_1089-134686-0001.wav"]
    with start_server(engine, vad, api_keys=(API_KEY,)) as server:
        script = tmp_path / "client.py"
        script.write_text(original_script(f"ws://127.0.0.1:{server.port}/environments/production/websocket"))
        env = stand_in_microphone(clip.path, after="silence")
        env["BASETEN_API_KEY"] = API_KEY
        process = subprocess.Popen(
            [str(old_websockets_python), str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        seen: list[str] = []
        try:
            deadline = time.monotonic() + clip.duration_s + 60
            for line in lines_of(process):
                seen.append(line)
                finals = [x.removeprefix("[final] ") for x in seen if x.startswith("[final] ")]
                if word_error_rate(clip.reference, " ".join(finals)) <= 0.15 or time.monotonic() > deadline:
                    break
        finally:
            process.kill()
            process.wait(timeout=30)

    assert seen[:3] == ["Connected to server", "Sent metadata to server", "Streaming mic audio..."], seen
    transcripts = seen[3:]
    assert all(re.match(r"\[(partial|final)\] ", line) for line in transcripts), transcripts
    assert any(line.startswith("[partial] ") for line in transcripts), transcripts
    finals = [line.removeprefix("[final] ") for line in transcripts if line.startswith("[final] ")]
    assert word_error_rate(clip.reference, " ".join(finals)) <= 0.15, transcripts
