"""Shared fixtures: the shared speech clips, one loaded engine, and real servers on loopback:
one process (uvicorn in a thread), or a one-machine Ray cluster (tests/ray_cluster.py)."""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from whisperwire.cli import LOCAL_RAY_ENV

# Read when ray is first imported: the tests' Ray cluster listens on loopback only.
os.environ.update(LOCAL_RAY_ENV)

# The one place the shared clips are found: $WHISPERWIRE_AUDIO_DIR, else ../shared/audio beside
# the repository. Tests take them through the fixtures below (audio_dir, clips, clip_audio).
AUDIO_DIR = Path(os.environ.get("WHISPERWIRE_AUDIO_DIR", Path(__file__).resolve().parents[2] / "shared" / "audio"))


@dataclass(frozen=True)
class Clip:
    path: Path
    duration_s: float
    language: str
    reference: str


def _manifest() -> dict[str, Clip]:
    with open(AUDIO_DIR / "manifest.tsv", newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return {
            row["file"]: Clip(AUDIO_DIR / row["file"], float(row["duration_s"]), row["language"], row["reference_transcript"])
            for row in rows
        }


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    if not (AUDIO_DIR / "manifest.tsv").exists():
        pytest.fail(f"shared speech clips not found at {AUDIO_DIR} (set WHISPERWIRE_AUDIO_DIR)")
    return AUDIO_DIR


@pytest.fixture(scope="session")
def clips(audio_dir: Path) -> dict[str, Clip]:
    return _manifest()


@pytest.fixture(scope="session")
def clip_audio(audio_dir: Path) -> Callable[[str], np.ndarray]:
    """A shared clip by file name, as float32 at 16 kHz."""
    return lambda name: read_wav(audio_dir / name)


def read_wav(path: Path) -> np.ndarray:
    """A 16 kHz mono s16 WAV as float32."""
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == 16_000 and wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


@pytest.fixture(scope="session")
def engine():
    from whisperwire.engine import load_engine

    return load_engine("tiny.en")


@pytest.fixture(scope="session")
def base_engine(tmp_path_factory: pytest.TempPathFactory):
    from whisperwire.engine import load_engine

    cache = os.environ.get("WHISPERWIRE_CACHE_DIR") or tmp_path_factory.mktemp("model-cache")
    return load_engine("base", cache_dir=Path(cache))


@pytest.fixture(scope="session")
def vad():
    from whisperwire.vad import SileroVAD

    return SileroVAD()


class RunningServer:
    """A real uvicorn server on a loopback port, in a thread of its own."""

    def __init__(self, app) -> None:  # noqa: ANN001 - a Starlette app
        self.app = app
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(app, ws="websockets-sansio", log_level="warning", ws_max_size=app.state.whisperwire.config.limits.max_frame_bytes)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self._sock])

    def run_on_server(self, coroutine, timeout: float = 60.0):  # noqa: ANN001, ANN201
        """Run a coroutine on the server's own event loop (e.g. the app's drain) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/websocket"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RunningServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    def sibling(self, **config) -> RunningServer:  # noqa: ANN003 - ServerConfig's keywords
        """Another server with the same engine and VAD, and these settings."""
        state = self.app.state.whisperwire
        return start_server(state.engine, state.vad, **config)


def virtualenv_with(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str, requirements: tuple[str, ...]
) -> Path:
    """The python of a virtualenv of a third-party client's own, kept in pytest's cache between runs."""
    cache = getattr(request.config, "cache", None)
    home = cache.mkdir(name) if cache else tmp_path_factory.mktemp(name)
    python = home / "bin" / "python"
    marker = home / "requirements.txt"
    wanted = "\n".join(requirements)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    shutil.rmtree(home, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, timeout=120)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *requirements], capture_output=True, text=True, timeout=900, check=False
    )
    if install.returncode != 0:
        pytest.fail(f"could not install {' '.join(requirements)}:\n{install.stderr}")
    marker.write_text(wanted)
    return python


def start_server(engine, vad, **config) -> RunningServer:  # noqa: ANN001
    from whisperwire.config import ServerConfig
    from whisperwire.server import create_app

    return RunningServer(create_app(engine, ServerConfig(**config), vad))


@pytest.fixture(scope="session")
def process_server(engine, vad) -> Iterator[RunningServer]:
    with start_server(engine, vad) as running:
        yield running


@pytest.fixture(scope="session")
def server(process_server: RunningServer) -> RunningServer:
    return process_server


@pytest.fixture(scope="session")
def ray_cluster():  # noqa: ANN201 - tests.ray_cluster.RayCluster, imported with ray
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the test extra installs whisperwire[ray])")
    from tests.ray_cluster import RayCluster

    cluster = RayCluster()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def ray_server(ray_cluster):  # noqa: ANN001, ANN201
    """The default whisperwire application on Ray Serve: one ingress, one recognizer, tiny.en."""
    with ray_cluster.deploy() as running:
        yield running


STAND_IN_MICROPHONE = Path(__file__).parent / "stand_in_microphone"


def stand_in_microphone(clip: Path, *, seconds: float | None = None, after: str = "silence", done: Path | None = None) -> dict[str, str]:
    """Environment for a subprocess whose `sounddevice` plays `clip` as its microphone."""
    env = dict(os.environ, FAKE_MIC_WAV=str(clip), FAKE_MIC_AFTER=after, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(STAND_IN_MICROPHONE), str(Path(__file__).parents[1])])
    if seconds is not None:
        env["FAKE_MIC_SECONDS"] = str(seconds)
    if done is not None:
        env["FAKE_MIC_DONE"] = str(done)
    return env
