"""``whisperwire mic``: the microphone, live, to a server; transcripts in the terminal.

The current partial rewrites one dimmed line in place; finals scroll above it with their times,
language and confidence. Ctrl-C stops the microphone, sends what it had captured and terminate,
and waits for the last finals; a second Ctrl-C quits at once.

``sounddevice`` is imported only when the command runs: on Linux its wheel needs the system's
PortAudio library, which nothing else in whisperwire does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from .client import SessionClosed, Stream, WhisperwireError, connect
from .console import add_session_arguments, api_key_of, message_tag, report_failure, session_metadata, word_lines
from .protocol import Transcription
from .values import SAMPLE_RATE

BLOCK_MS = 20


class MicrophoneError(Exception):
    """No usable input: PortAudio missing, no input device, or the device cannot be opened."""


def add_mic_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``whisperwire mic``."""
    add_session_arguments(parser, partials=True)
    parser.add_argument(
        "--device",
        type=_device,
        default=None,
        metavar="ID",
        help="input device number or part of its name [the default input; "
        "`python -m sounddevice` lists them]",
    )


def _device(text: str) -> int | str:
    return int(text) if text.isdigit() else text


# --------------------------------------------------------------------------- the microphone


@dataclass(frozen=True)
class Input:
    device: int | str | None
    name: str
    sample_rate: int


def load_sounddevice() -> ModuleType:
    try:
        import sounddevice
    except OSError as exc:  # raised by the import itself when PortAudio is not installed
        raise MicrophoneError(
            f"{exc}; install PortAudio (Debian and Ubuntu: apt-get install libportaudio2)"
        ) from None
    return sounddevice


def find_input(sd: ModuleType, device: int | str | None) -> Input:
    """The input device to record from, at 16 kHz when it can, else at its own rate."""
    try:
        info: dict[str, Any] = sd.query_devices(device, kind="input")
    except (sd.PortAudioError, ValueError) as exc:
        which = "no input device" if device is None else f"no input device {device!r}"
        raise MicrophoneError(
            f"{which} found ({exc}); is a microphone connected? "
            "`python -m sounddevice` lists the devices"
        ) from None
    try:
        sd.check_input_settings(device, channels=1, dtype="int16", samplerate=SAMPLE_RATE)
        rate = SAMPLE_RATE
    except (sd.PortAudioError, ValueError):
        # Some devices record only at their own rate; the server resamples any of 8-48 kHz.
        rate = int(info["default_samplerate"])
    return Input(device, str(info["name"]), rate)


@contextlib.asynccontextmanager
async def capture(
    sd: ModuleType, source: Input, on_status: Any = None
) -> AsyncIterator[asyncio.Queue[bytes | None]]:
    """Record mono s16le blocks of ``BLOCK_MS`` into a queue while the context is open.

    On leaving, the device is stopped and ``None`` follows the last block in the queue.
    """
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[bytes | None] = asyncio.Queue()

    def callback(indata: Any, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: copy the block now (its buffer is reused), hand it to the loop.
        loop.call_soon_threadsafe(blocks.put_nowait, bytes(indata))
        if status and on_status is not None:
            loop.call_soon_threadsafe(on_status, str(status))

    try:
        stream = sd.RawInputStream(
            samplerate=source.sample_rate,
            blocksize=source.sample_rate * BLOCK_MS // 1000,
            device=source.device,
            channels=1,
            dtype="int16",
            callback=callback,
        )
    except (sd.PortAudioError, ValueError) as exc:
        raise MicrophoneError(f"cannot record from {source.name}: {exc}") from None
    try:
        with stream:
            yield blocks
    finally:
        # Blocks the callback handed over are still queued on the loop: the end goes after them.
        loop.call_soon(blocks.put_nowait, None)


# --------------------------------------------------------------------------- the terminal


class LiveTranscript:
    """Finals scroll; on a terminal, the current partial rewrites one line below them.

    When the output is not a terminal (a pipe, a file) only the finals are written.
    """

    def __init__(self, console: Console, *, words: bool = False) -> None:
        self.console = console
        self.words = words
        self._live = Live(console=console, auto_refresh=False, transient=True)

    def __enter__(self) -> LiveTranscript:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()

    def show(self, message: Transcription) -> None:
        if not message.is_final:
            self._live.update(self._partial(message), refresh=True)
            return
        self._live.update(Text(), refresh=True)
        if message.transcript.strip():  # an empty final only ends its partials
            self.console.print(self._final(message), soft_wrap=True)

    def note(self, text: str) -> None:
        """A status line for the person at the microphone, on stderr."""
        # While the live line is shown, rich redirects stderr so the note lands above it.
        print(text, file=sys.stderr, flush=True)

    def _final(self, message: Transcription) -> Text:
        lines = Text.assemble(
            (message_tag(message, details=True), "cyan"), " ", message.transcript.strip()
        )
        if self.words:
            for line in word_lines(message):
                lines.append("\n" + line, style="dim")
        return lines

    def _partial(self, message: Transcription) -> Text:
        text = message.transcript.strip()
        room = max(10, self.console.width - 3)
        if len(text) > room:  # keep the words being spoken: the line's end, on one line
            text = "…" + text[-room + 1 :]
        return Text(f"… {text}", style="dim", no_wrap=True, overflow="crop")


# --------------------------------------------------------------------------- the session


class _Interrupts:
    """The first Ctrl-C asks to stop (``stop`` is set); the second cancels the command."""

    def __init__(self, display: LiveTranscript) -> None:
        self.stop = asyncio.Event()
        self._display = display
        self._task = asyncio.current_task()
        with contextlib.suppress(NotImplementedError):  # no signal handlers: Ctrl-C quits
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._interrupted)

    def _interrupted(self) -> None:
        if self.stop.is_set():
            if self._task is not None:
                self._task.cancel()
            return
        self.stop.set()
        self._display.note("stopping: waiting for the last transcript (Ctrl-C again to quit now)")


async def transcribe_microphone(
    args: argparse.Namespace, sd: ModuleType, source: Input, display: LiveTranscript
) -> None:
    """Stream ``source`` to the server until Ctrl-C, showing messages; then flush and end."""
    interrupts = _Interrupts(display)
    metadata = session_metadata(args, sample_rate=source.sample_rate)
    async with connect(args.url, api_key_of(args), metadata=metadata) as stream:
        receiver = asyncio.create_task(_receive(stream, display))
        sender: asyncio.Task[None] | None = None
        try:
            async with capture(sd, source, on_status=_warn_once(display)) as blocks:
                sender = asyncio.create_task(_send(stream, blocks))
                display.note(
                    f"listening on {source.name} at {source.sample_rate} Hz; Ctrl-C to stop"
                )
                stopping = asyncio.create_task(interrupts.stop.wait())
                # Until Ctrl-C, or until the server ends the session by itself.
                await asyncio.wait({receiver, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
            if not receiver.done():
                with contextlib.suppress(SessionClosed):  # the receiver says why
                    await sender
            await receiver
        finally:
            for task in (receiver, sender):
                if task is not None:
                    task.cancel()


async def _send(stream: Stream, blocks: asyncio.Queue[bytes | None]) -> None:
    """Send every captured block; at the end, terminate (the server flushes its finals)."""
    while (block := await blocks.get()) is not None:
        await stream.send(block)
    await stream.close()


async def _receive(stream: Stream, display: LiveTranscript) -> None:
    async for message in stream:
        display.show(message)


def _warn_once(display: LiveTranscript) -> Any:
    warned = False

    def warn(status: str) -> None:
        nonlocal warned
        if not warned:
            warned = True
            display.note(f"warning: audio input: {status.strip()} (the computer is too busy?)")

    return warn


def run_mic(args: argparse.Namespace) -> int:
    """Run ``whisperwire mic``. Exit status: 0 stopped with Ctrl-C after the last finals,
    1 the server refused or ended the session, 2 no microphone or no server, 130 a second
    Ctrl-C."""
    err = sys.stderr
    try:
        sd = load_sounddevice()
        source = find_input(sd, args.device)
        with LiveTranscript(Console(highlight=False), words=args.word_timestamps) as display:
            asyncio.run(transcribe_microphone(args, sd, source, display))
    except MicrophoneError as exc:
        print(f"error: {exc}", file=err)
        return 2
    except WhisperwireError as exc:
        return report_failure(exc, err)
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    return 0
