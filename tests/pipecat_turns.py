"""Drive Pipecat's OpenAIRealtimeSTTService, unmodified, against a whisperwire base URL (run by
tests/test_pipecat.py in a virtualenv with pipecat-ai[openai], not by pytest itself).

    python pipecat_turns.py BASE_URL API_KEY [--server-vad] CLIP.s16 [CLIP.s16 ...]
    python pipecat_turns.py BASE_URL API_KEY --bad-model

The service is the one docs/integrations.md builds (its snippet, run with this URL and key),
unless an argument asks for another. A pipeline of the service and a collector, as an agent's: each clip's 16 kHz s16 audio goes in as
20 ms InputAudioRawFrames at real time. Without --server-vad the service's default applies (turn
detection off, a local VAD): after each clip comes the VADUserStoppedSpeakingFrame that a local
VAD would send, which makes the service commit. With --server-vad the server's VAD ends turns,
and a second of silence follows each clip, as a pause between a speaker's turns would.
Prints one JSON line: the final transcripts in order, how often the service connected, and the
errors it pushed. With --bad-model the service asks for a model the server does not serve.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.stt import OpenAIRealtimeSTTService
from pipecat.workers.runner import WorkerRunner
from snippets import run_snippet  # beside this script

FRAME = 320  # 20 ms at 16 kHz
WAIT_S = 60.0  # a bound on a hang only


class Collect(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.finals: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            self.finals.append(frame.text)
        await self.push_frame(frame, direction)


def documented_service(base_url: str, key: str) -> OpenAIRealtimeSTTService:
    replacements = {'"ws://127.0.0.1:8000/v1/realtime"': repr(base_url), '"my-key"': repr(key)}
    return run_snippet("Pipecat", replacements)["stt"]


async def main(base_url: str, key: str, args: list[str]) -> None:
    server_vad = "--server-vad" in args
    if server_vad:
        stt = OpenAIRealtimeSTTService(api_key=key, base_url=base_url, turn_detection={"type": "server_vad"})
    elif "--bad-model" in args:
        settings = OpenAIRealtimeSTTService.Settings(model="no-such-model")
        stt = OpenAIRealtimeSTTService(api_key=key, base_url=base_url, settings=settings)
    else:
        stt = documented_service(base_url, key)
    connects: list[int] = []

    @stt.event_handler("on_connected")
    async def on_connected(service) -> None:  # noqa: ANN001
        connects.append(1)

    collect = Collect()
    worker = PipelineWorker(Pipeline([stt, collect]), params=PipelineParams(audio_in_sample_rate=16_000), idle_timeout_secs=None)
    errors: list[str] = []

    @worker.event_handler("on_pipeline_error")
    async def on_pipeline_error(worker: PipelineWorker, frame: ErrorFrame) -> None:
        errors.append(frame.error)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    clips = [Path(arg).read_bytes() for arg in args if not arg.startswith("--")]
    await until(lambda: connects, "the service to connect")
    pause = bytes(2 * 16_000) if server_vad else b""
    for clip in clips:
        audio = clip + pause
        await worker.queue_frame(VADUserStartedSpeakingFrame())
        start = time.monotonic()
        for n, offset in enumerate(range(0, len(audio), 2 * FRAME)):
            await worker.queue_frame(InputAudioRawFrame(audio=audio[offset : offset + 2 * FRAME], sample_rate=16_000, num_channels=1))
            await asyncio.sleep(max(0.0, start + (n + 1) * FRAME / 16_000 - time.monotonic()))
        await worker.queue_frame(VADUserStoppedSpeakingFrame())
    if clips:
        await until(lambda: len(collect.finals) >= len(clips), "a final for every clip")
    else:
        await until(lambda: errors, "an error")
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, WAIT_S)
    print(json.dumps({"finals": collect.finals, "connects": len(connects), "errors": errors}), flush=True)


async def until(condition, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"never happened: {what}")
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
