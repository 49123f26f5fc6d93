"""Pipecat's OpenAIRealtimeSTTService, unmodified, against whisperwire's Realtime endpoint on loopback.

The service (pipecat-ai 1.14.0, in a virtualenv of its own) is given only the server's
`base_url`; its default model name and its default turn handling (a local VAD that commits each
turn) are served as they are. tests/pipecat_turns.py is the pipeline it runs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import read_wav, start_server, virtualenv_with
from tests.streaming import TURN_WER_BOUND, s16le, word_error_rate

REQUIREMENTS = ("pipecat-ai[openai]==1.14.0",)
SCRIPT = Path(__file__).with_name("pipecat_turns.py")
API_KEY = "pipecat-key"
CLIPS = ["en_harvard_birch_canoe.wav", "en_timit_LDC93S1.wav"]


@pytest.fixture(scope="session")
def pipecat_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return virtualenv_with(request, tmp_path_factory, "pipecat-venv", REQUIREMENTS)


@pytest.fixture(scope="module")
def keyed(engine, vad):
    with start_server(engine, vad, api_keys=(API_KEY,)) as running:
        yield running


def run(python: Path, server, *args: str) -> dict:  # noqa: ANN001
    url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    done = subprocess.run([str(python), str(SCRIPT), url, API_KEY, *args], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(line)


def clip_files(clips, tmp_path: Path) -> list[str]:  # noqa: ANN001
    paths = []
    for name in CLIPS:
        path = tmp_path / f"{name}.s16"
        path.write_bytes(s16le(read_wav(clips[name].path)))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("turns", ["local VAD commits", "--server-vad"])
def test_each_turn_reaches_the_pipeline_as_a_transcription(keyed, clips, tmp_path: Path, pipecat_python: Path, turns: str) -> None:
    args = [turns] if turns.startswith("--") else []
    outcome = run(pipecat_python, keyed, *args, *clip_files(clips, tmp_path))
    assert outcome["errors"] == [] and outcome["connects"] == 1, outcome
    assert len(outcome["finals"]) == len(CLIPS), outcome
    for name, text in zip(CLIPS, outcome["finals"]):
        assert word_error_rate(clips[name].reference, text) <= TURN_WER_BOUND[name], (name, text)


def test_a_model_the_server_lacks_reaches_the_pipeline_as_an_error(keyed, pipecat_python: Path) -> None:
    outcome = run(pipecat_python, keyed, "--bad-model")
    assert outcome["finals"] == []
    assert "[model_not_found]" in outcome["errors"][0] and "'no-such-model'" in outcome["errors"][0], outcome
