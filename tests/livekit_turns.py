"""Drive LiveKit's Baseten STT plugin, unmodified, against a whisperwire URL (run by
tests/test_livekit.py in a virtualenv with livekit-plugins-baseten, not by pytest itself).

    python livekit_turns.py URL API_KEY CLIP.s16 [CLIP.s16 ...]
    python livekit_turns.py URL API_KEY --bad-metadata
    python livekit_turns.py URL API_KEY --docs CLIP.s16

One plugin stream per clip: its 16 kHz s16 audio pushed in 20 ms frames at real time, then
end_input(), as an agent does at the end of a turn; no finalize or terminate is sent (the plugin
sends neither). Prints one JSON line per clip: the final transcripts, and how many times the
plugin connected. With --bad-metadata the plugin asks for a VAD threshold the server rejects,
and the line says what the plugin raised. With --docs the plugin is the one docs/integrations.md
builds (its snippet, run with this URL and key, in the HTTP context an agent job provides).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
from livekit import rtc
from livekit.agents import APIConnectOptions, stt
from livekit.agents.utils import http_context
from livekit.plugins import baseten
from snippets import run_snippet  # beside this script

FRAME = 320  # 20 ms at 16 kHz
FINAL_WAIT_S = 20.0  # a bound on a hang only: the final comes a silence window after the audio


def documented_plugin(url: str, key: str) -> baseten.STT:
    replacements = {'"ws://127.0.0.1:8000/v1/websocket"': repr(url), '"my-key"': repr(key)}
    return run_snippet("LiveKit Agents", replacements)["stt"]


async def one_turn(plugin: baseten.STT, audio: bytes, connects: list[int]) -> dict:
    stream = plugin.stream(conn_options=APIConnectOptions(max_retry=0, timeout=10))
    finals: list[str] = []
    start = time.monotonic()
    for n, offset in enumerate(range(0, len(audio), 2 * FRAME)):
        chunk = audio[offset : offset + 2 * FRAME]
        stream.push_frame(rtc.AudioFrame(chunk, sample_rate=16_000, num_channels=1, samples_per_channel=len(chunk) // 2))
        await asyncio.sleep(max(0.0, start + (n + 1) * FRAME / 16_000 - time.monotonic()))
    stream.end_input()

    async def collect() -> None:
        async for event in stream:
            if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                finals.append(event.alternatives[0].text)

    try:
        await asyncio.wait_for(collect(), FINAL_WAIT_S)
    except TimeoutError:
        pass  # the stream stays open after its input ends: the plugin waits for the server
    await stream.aclose()
    return {"finals": finals, "connects": len(connects)}


async def bad_metadata(session: aiohttp.ClientSession, url: str, key: str) -> dict:
    plugin = baseten.STT(api_key=key, model_endpoint=url, http_session=session, vad_threshold=1.5)
    stream = plugin.stream(conn_options=APIConnectOptions(max_retry=0, timeout=10))
    stream.push_frame(rtc.AudioFrame(b"\x00" * 2 * FRAME, sample_rate=16_000, num_channels=1, samples_per_channel=FRAME))
    stream.end_input()
    try:
        async for _ in stream:
            pass
    except Exception as error:  # noqa: BLE001 - the plugin's APIStatusError: what an agent sees
        return {"raised": type(error).__name__, "status_code": getattr(error, "status_code", None)}
    return {"raised": None}


async def main(url: str, key: str, args: list[str]) -> None:
    connects: list[int] = []
    clips = [Path(arg).read_bytes() for arg in args if not arg.startswith("--")]
    if args[:1] == ["--docs"]:
        http_context._new_session_ctx()  # what an agent job sets up before the plugin is used
        try:
            print(json.dumps(await one_turn(documented_plugin(url, key), clips[0], [])), flush=True)
        finally:
            await http_context._close_http_ctx()
        return

    async def on_request_start(session, context, params) -> None:  # aiohttp's trace hook
        connects.append(1)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        if args == ["--bad-metadata"]:
            print(json.dumps(await bad_metadata(session, url, key)), flush=True)
            return
        for clip in clips:
            connects.clear()
            plugin = baseten.STT(api_key=key, model_endpoint=url, http_session=session, enable_partial_transcripts=False)
            print(json.dumps(await one_turn(plugin, clip, connects)), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
