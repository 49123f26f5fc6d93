"""LiveKit Agents' Baseten STT plugin, unmodified, against whisperwire on loopback.

The plugin (livekit-plugins-baseten 1.8.9, in a virtualenv of its own) ends a turn by no longer
sending audio: it never sends finalize or terminate_session. Its last utterance is finalized
because audio that stops is silence (docs/protocol.md). It ignores error messages, so a
rejected metadata reaches the agent only as the close code in its exception.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import read_wav, start_server, virtualenv_with
from tests.streaming import s16le, word_error_rate

REQUIREMENTS = ("livekit-plugins-baseten==1.8.9",)
SCRIPT = Path(__file__).with_name("livekit_turns.py")
API_KEY = "livekit-key"


@pytest.fixture(scope="session")
def livekit_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return virtualenv_with(request, tmp_path_factory, "livekit-venv", REQUIREMENTS)


def run(python: Path, url: str, *args: str) -> list[dict]:
    done = subprocess.run([str(python), str(SCRIPT), url, API_KEY, *args], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def speech_only(audio: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """The clip cut right after its last loud sample: no trailing silence ends its utterance."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[: loud[-1] + 1]


def test_every_turn_gets_its_final_with_one_connection(engine, vad, clips, tmp_path: Path, livekit_python: Path) -> None:
    names = ["en_jfk_inaugural_11s.wav", "en_harvard_birch_canoe.wav"]
    paths = []
    for name in names:
        path = tmp_path / f"{name}.s16"
        path.write_bytes(s16le(speech_only(read_wav(clips[name].path))))
        paths.append(str(path))
    with start_server(engine, vad, api_keys=(API_KEY,)) as server:
        turns = run(livekit_python, f"ws://127.0.0.1:{server.port}/v1/websocket", *paths)
    assert len(turns) == len(names)
    for name, turn in zip(names, turns):
        assert turn["finals"], (name, turn)
        assert word_error_rate(clips[name].reference, " ".join(turn["finals"])) <= 0.15, (name, turn)
        assert turn["connects"] == 1, turn  # no reconnect


def test_a_rejected_metadata_reaches_the_agent_as_close_code_1007(engine, vad, livekit_python: Path) -> None:
    with start_server(engine, vad, api_keys=(API_KEY,)) as server:
        [outcome] = run(livekit_python, f"ws://127.0.0.1:{server.port}/v1/websocket", "--bad-metadata")
    assert outcome == {"raised": "APIStatusError", "status_code": 1007}, outcome


def test_the_snippet_in_the_docs_works(engine, vad, clips, tmp_path: Path, livekit_python: Path) -> None:
    clip = clips["en_harvard_birch_canoe.wav"]
    path = tmp_path / "clip.s16"
    path.write_bytes(s16le(speech_only(read_wav(clip.path))))
    with start_server(engine, vad, api_keys=(API_KEY,)) as server:
        [turn] = run(livekit_python, f"ws://127.0.0.1:{server.port}/v1/websocket", "--docs", str(path))
    assert word_error_rate(clip.reference, " ".join(turn["finals"])) <= 0.15, turn
