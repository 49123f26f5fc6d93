"""`whisperwire mic` as a person runs it: in a terminal (a pseudo-terminal here), against a live
server, with a stand-in microphone that plays a shared clip in real time, stopped by Ctrl-C."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pyte
import pytest

from tests.conftest import STAND_IN_MICROPHONE, stand_in_microphone
from tests.streaming import word_error_rate

DIM = "\x1b[2m"
FINAL = re.compile(r"\[final (\d+\.\d\d)-(\d+\.\d\d) en conf (0\.\d\d|1\.00)\] (.+)$")
PARTIAL = re.compile(r"… \S.*")


def screen(raw: str) -> list[str]:
    """The lines a terminal 100 columns wide shows after ``raw``, without trailing blanks."""
    display = pyte.Screen(100, 30)
    pyte.Stream(display).feed(raw)
    return [line.rstrip() for line in display.display if line.strip()]


def mic_command(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "whisperwire.cli", "mic", "--url", url, *args]


class Terminal:
    """A process whose stdin, stdout and stderr are a pseudo-terminal 100 columns wide."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        env = dict(env, TERM="xterm-256color", COLUMNS="100")
        self.process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.output = ""

    def read_until(self, done: Callable[[], bool], timeout: float) -> str:
        """Read until ``done()`` is true (or the process has ended); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; the terminal shows {self.output!r}")
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the process closed the terminal
                    chunk = b""
                if not chunk and self.process.poll() is not None:
                    return self.output
                self.output += chunk.decode("utf-8", "replace")
        return self.output

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        os.close(self.master)


def test_mic_shows_partials_in_place_and_ctrl_c_waits_for_the_last_final(server, clips, tmp_path: Path) -> None:
    # The clip is cut while the speech goes on and the device then gives nothing more, so the
    # server never hears the speech end: only the terminate that Ctrl-C sends brings its final.
    clip = clips["en_new_home_in_the_stars.wav"]
    delivered = tmp_path / "delivered"
    env = stand_in_microphone(clip.path, seconds=3.0, after="nothing", done=delivered)
    terminal = Terminal(mic_command(server.url), env)
    try:
        terminal.read_until(lambda: delivered.exists() and DIM in terminal.output, timeout=60)
        before_ctrl_c = len(terminal.output)
        terminal.process.send_signal(signal.SIGINT)
        terminal.read_until(lambda: terminal.process.poll() is not None, timeout=60)
        assert terminal.process.wait(timeout=30) == 0, terminal.output
    finally:
        terminal.close()

    raw = terminal.output
    # While the partial was up, it was the one dimmed line under the status line.
    listening, partial = screen(raw[:before_ctrl_c])
    assert listening == "listening on stand-in microphone at 16000 Hz; Ctrl-C to stop"
    assert PARTIAL.fullmatch(partial), partial
    assert DIM in raw[:before_ctrl_c]
    # At the end the partial is gone, the final took its place, and nothing else was written.
    lines = screen(raw)
    assert lines[:2] == [
        listening,
        "stopping: waiting for the last transcript (Ctrl-C again to quit now)",
    ], lines
    [final] = [FINAL.match(line) for line in lines[2:]]
    assert final is not None, lines
    assert "[final " in raw[before_ctrl_c:], "the final came after Ctrl-C"
    start, end, _, text = final.groups()
    assert 0.0 <= float(start) < float(end) <= 3.05
    assert word_error_rate(clip.reference, text) <= 0.15, text


def test_mic_into_a_pipe_writes_only_the_finals(server, clips, tmp_path: Path) -> None:
    clip = clips["en_harvard_birch_canoe.wav"]
    delivered = tmp_path / "delivered"
    env = stand_in_microphone(clip.path, after="silence", done=delivered)
    process = subprocess.Popen(mic_command(server.url), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not delivered.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # a quiet second: the speech has ended
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines and all(FINAL.match(line) for line in lines), out
    spoken = " ".join(FINAL.match(line).group(4) for line in lines)  # type: ignore[union-attr]
    assert word_error_rate(clip.reference, spoken) <= 0.2, spoken


def test_mic_without_an_input_device_says_so(server, tmp_path: Path) -> None:
    env = stand_in_microphone(tmp_path / "unused.wav")
    del env["FAKE_MIC_WAV"]  # the stand-in then has no input device, as a machine without one
    done = subprocess.run(mic_command(server.url), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no input device found" in done.stderr
    assert done.stdout == ""


def test_mic_with_the_real_sounddevice_explains_what_is_missing() -> None:
    # This machine has no sound card; PortAudio itself may be missing too. Either way the
    # command must say which, before it ever connects.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert str(STAND_IN_MICROPHONE) not in env.get("PYTHONPATH", "")
    done = subprocess.run(
        mic_command("ws://127.0.0.1:9/v1/websocket"), env=env, capture_output=True, text=True, timeout=60
    )
    if "cannot connect" in done.stderr:
        pytest.skip("this machine has an input device: the no-device message cannot be seen here")
    assert done.returncode == 2, done.stderr
    assert "no input device found" in done.stderr or "libportaudio2" in done.stderr, done.stderr


def test_without_portaudio_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from whisperwire.mic import MicrophoneError, load_sounddevice

    real_import = builtins.__import__

    def no_portaudio(name: str, *args: object, **kwargs: object) -> object:
        if name == "sounddevice":  # what its import raises when the library is not installed
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    with pytest.raises(MicrophoneError, match="PortAudio library not found; install PortAudio .*libportaudio2"):
        load_sounddevice()
