"""Faults of the Ray Serve deployment, on the tests' one-machine Ray cluster.

The protocol itself is tested against this deployment by tests/test_server.py (every test that
takes `server` runs against it too). Here: replicas die while clients are streaming.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import read_wav
from tests.streaming import s16le, stream, word_error_rate

ray = pytest.importorskip("ray", reason="Ray is not installed (the test extra installs whisperwire[ray])")

NAMES = ["en_timit_LDC93S1.wav", "en_harvard_birch_canoe.wav", "en_pocketsphinx_go_forward.wav"]


async def ongoing(replica: Any) -> int:
    # The replica actor's own count of requests it holds (Ray Serve internals, for the test only):
    # a recognition being computed, or a WebSocket for an ingress replica.
    return await replica.get_num_ongoing_requests.remote()


async def test_a_recognizer_replica_killed_mid_recognition_costs_no_utterance(ray_cluster, clips) -> None:
    pieces = [np.zeros(16_000, dtype=np.float32)]
    for name in NAMES:
        pieces += [read_wav(clips[name].path), np.zeros(24_000, dtype=np.float32)]
    audio = s16le(np.concatenate(pieces))
    with ray_cluster.deploy(recognizer_replicas=2) as app:
        replicas = app.replicas("Recognizer")
        assert len(replicas) == 2

        async def kill_one_while_it_recognizes() -> int:
            # Without partials, every recognition is an utterance's final.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for replica in replicas:
                    if (held := await ongoing(replica)) > 0:
                        ray.kill(replica, no_restart=True)
                        return held
                await asyncio.sleep(0.01)
            raise AssertionError("no recognition was ever seen in flight")

        killer = asyncio.create_task(kill_one_while_it_recognizes())
        received = await stream(app.url, {}, audio, speed=2.0)
        held = await killer

    assert held >= 1
    assert received.errors == [] and received.close_code == 1000
    # Exactly one final per utterance, in order, each with its own words.
    assert [m["transcription_num"] for m in received.finals] == [0, 1, 2], received.messages
    for message, name in zip(received.finals, NAMES):
        assert word_error_rate(clips[name].reference, message["transcript"]) <= 0.25, message["transcript"]


async def open_session(url: str, speech: np.ndarray) -> ClientConnection:
    ws = await connect(url, open_timeout=30)
    await ws.send(json.dumps({"streaming_vad_config": {"min_silence_duration_ms": 5000}}))
    await ws.send(s16le(speech))
    return ws


async def closed_with(ws: ClientConnection, timeout: float = 30) -> tuple[int | None, str, list[dict]]:
    messages = []
    try:
        async with asyncio.timeout(timeout):
            async for raw in ws:
                messages.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason or "", messages


async def test_an_ingress_replica_lost_closes_its_own_sessions_with_1011_and_no_one_elses(ray_cluster, clips) -> None:
    clip = clips["en_new_home_in_the_stars.wav"]
    speech = read_wav(clip.path)
    start, rest = speech[: 2 * 16_000], speech[2 * 16_000 :]
    with ray_cluster.deploy(ingress_replicas=2) as app:
        replicas = app.replicas("Ingress")
        assert len(replicas) == 2
        sessions: list[tuple[ClientConnection, int]] = []  # (socket, index of its replica)
        while len({where for _, where in sessions}) < 2:
            assert len(sessions) < 8, "the proxy never used the second ingress replica"
            before = [await ongoing(r) for r in replicas]
            ws = await open_session(app.url, start)
            after = [await ongoing(r) for r in replicas]
            [where] = [i for i in range(2) if after[i] > before[i]]
            sessions.append((ws, where))

        ray.kill(replicas[0], no_restart=True)
        lost = [ws for ws, where in sessions if where == 0]
        kept = [ws for ws, where in sessions if where == 1]
        for ws in lost:
            code, reason, _ = await closed_with(ws)
            assert (code, reason) == (1011, "ingress replica lost")

        # The other replica's sessions never noticed: the rest of their speech, their finals, 1000.
        for ws in kept:
            await ws.send(s16le(rest))
            await ws.send('{"type": "terminate"}')
        for ws in kept:
            code, _, messages = await closed_with(ws, timeout=120)
            assert code == 1000 and [m["is_final"] for m in messages] == [True], messages
            assert word_error_rate(clip.reference, messages[0]["transcript"]) <= 0.2, messages


def test_the_deploy_config_is_one_serve_accepts_with_the_code_defaults() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from whisperwire import ray_serve
    from whisperwire.settings import SettingsError

    path = Path(__file__).resolve().parents[1] / "deploy" / "ray-serve.yaml"
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    [app] = config.applications
    module, _, name = app.import_path.partition(":")
    assert (module, name) == ("whisperwire.ray_serve", "build_app")
    ray_serve.build_app(app.args)  # every arg is a `serve` setting, of the right type
    # A wrong one is refused when the application is built, naming it, not in a replica's log.
    with pytest.raises(SettingsError, match="unknown setting 'idle_timout'"):
        ray_serve.build_app({**app.args, "idle_timout": 30})
    with pytest.raises(SettingsError, match="idle_timeout .*greater than 0"):
        ray_serve.build_app({**app.args, "idle_timeout": -1})
    # The file spells out what `serve run whisperwire.ray_serve:build_app` deploys by default.
    for deployment in app.deployments:
        code = getattr(ray_serve, deployment.name)
        assert deployment.max_ongoing_requests == code.max_ongoing_requests
        assert deployment.ray_actor_options.model_dump(exclude_unset=True) == code.ray_actor_options
        assert deployment.autoscaling_config == code._deployment_config.autoscaling_config.model_dump(exclude_unset=True)
        if "graceful_shutdown_timeout_s" in deployment.model_fields_set:
            assert deployment.graceful_shutdown_timeout_s == code._deployment_config.graceful_shutdown_timeout_s
    assert {d.name for d in app.deployments} == {"Ingress", "Recognizer"}
