"""whisperwire on Ray Serve: many machines, one protocol.

Two deployments. ``Ingress`` runs the ordinary ASGI app of server.py — WebSockets, sessions, the
VAD, the scheduler — with a ``RemoteEngine`` whose recognitions go to ``Recognizer`` replicas,
each holding one Whisper model. A WebSocket stays on the ingress replica that accepted it for
its whole life; the session never leaves that process, so the protocol is the single process's
by construction. Recognitions carry everything they need (audio and options), so any
recognizer replica can serve any of them, and one lost with its replica is simply sent again.

    serve run whisperwire.ray_serve:build_app model=tiny.en     # or: whisperwire serve --ray
    serve deploy deploy/ray-serve.yaml                          # a cluster; see docs/ray.md

The application's arguments are `whisperwire serve`'s settings by config key (settings.py), so
one table (docs/serving.md) says what each means; every replica reads them again on its own
node, where the environment and config file of that node apply, as for one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tokenizers import Tokenizer

try:
    import ray
    from ray import serve
    from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
    from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
    from ray.serve.handle import DeploymentHandle
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("whisperwire on Ray Serve needs Ray: pip install 'whisperwire[ray]'") from exc

from .engine import count_prompt_tokens, load_warm_engine
from .values import DecodeOptions, ModelInfo, Result
from .server import create_app
from .settings import Settings, load_settings, usable_cores

log = logging.getLogger("whisperwire.ray")

APP_NAME = "whisperwire"

# A recognition fails over to another replica on these: the replica (or its node) is gone, or
# it is momentarily full. An exception raised by the model itself is not here: sent again it
# would fail again, and the session reports it (1011), as the single process does.
_REPLICA_LOST = (RayActorError, WorkerCrashedError, NodeDiedError, ReplicaUnavailableError, BackPressureError)

T = TypeVar("T")


def replica_settings(args: dict[str, Any]) -> Settings:
    """The application's arguments as `whisperwire serve` settings, read on this node."""
    return load_settings({k: v for k, v in args.items() if k != "drain_signal"})


@dataclass(frozen=True)
class RecognizerDescription:
    """What an ingress needs to know of the model without loading it."""

    info: ModelInfo
    tokenizer_json: str


# --------------------------------------------------------------------------- recognizer


@serve.deployment(
    # A replica computes one recognition at a time: target one (no queue), and hold one more so
    # the next starts without a round trip. Only recognitions the ingresses have sent count, at
    # most inference_workers per ingress replica, which bounds how far this scales.
    max_ongoing_requests=2,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1},
    ray_actor_options={"num_cpus": 2},
)
class Recognizer:
    """One Whisper model. Calls run in Ray's thread pool; CTranslate2 takes them one at a time."""

    def __init__(self, args: dict[str, Any]) -> None:
        settings = replica_settings(args)
        self._engine = load_warm_engine(settings, cpu_threads=settings.cpu_threads or _reserved_cpus())

    def describe(self) -> RecognizerDescription:
        return RecognizerDescription(self._engine.info, self._engine.tokenizer.to_str())

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result:
        return self._engine.transcribe(audio, options)

    def detect_language(self, audio: np.ndarray, language_options: tuple[str, ...] = ()) -> tuple[str, float]:
        return self._engine.detect_language(audio, language_options)


def _reserved_cpus() -> int:
    # Ray pins nothing, so CTranslate2's own default would use every core of a shared node.
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    return max(1, round(cpus)) if cpus > 0 else usable_cores()


# --------------------------------------------------------------------------- the ingress side


class RemoteEngine:
    """The Engine interface over the Recognizer deployment.

    The scheduler calls ``transcribe`` and ``detect_language`` from its worker threads, where
    blocking on the handle is fine. ``count_tokens`` runs on the event loop while metadata is
    checked, so it must not wait on the network: it counts with the model's own tokenizer,
    fetched once.
    """

    def __init__(self, handle: DeploymentHandle, description: RecognizerDescription, retry_timeout_s: float = 60.0) -> None:
        self.info = description.info
        self._tokenizer = Tokenizer.from_str(description.tokenizer_json)
        self._handle = handle
        self._retry_timeout_s = retry_timeout_s

    def count_tokens(self, text: str) -> int:
        return count_prompt_tokens(self._tokenizer, text)

    def detect_language(self, audio: np.ndarray, language_options: tuple[str, ...] = ()) -> tuple[str, float]:
        return self._call("detect_language", lambda: self._handle.detect_language.remote(audio, language_options).result())

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result:
        return self._call("transcribe", lambda: self._handle.transcribe.remote(audio, options).result())

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, sent again (to whichever replica the router picks) while replicas are lost.

        The session asked once and gets one answer: a retry is invisible to it, so an utterance
        still gets exactly one final.
        """
        deadline = time.monotonic() + self._retry_timeout_s
        delay = 0.1
        while True:
            try:
                return call()
            except _REPLICA_LOST as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: recognizer replica lost (%s); sending it again", what, type(exc).__name__)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)


@serve.deployment(
    # Every WebSocket is one ongoing request for its whole life: this is sessions per replica.
    max_ongoing_requests=100,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 40},
    ray_actor_options={"num_cpus": 1},
    graceful_shutdown_timeout_s=60,
)
@serve.ingress()
class Ingress:
    """server.create_app with a RemoteEngine: the same routes, sessions and close codes."""

    async def __init__(self, recognizer: DeploymentHandle, args: dict[str, Any]) -> None:
        settings = replica_settings(args)
        if not settings.api_keys and not settings.allow_open:
            raise ValueError(
                "refusing to serve without API keys: set api_keys or $WHISPERWIRE_API_KEY on the "
                "ingress nodes, or allow_open: true to serve open on purpose"
            )
        description = await recognizer.describe.remote()
        engine = RemoteEngine(recognizer, description, settings.retry_timeout)
        self._app = create_app(engine, settings.server_config(inference_workers=settings.inference_workers))
        if drain_signal := args.get("drain_signal"):
            self._drain_watch = asyncio.create_task(self._drain_when_signalled(drain_signal))

    def __serve_build_asgi_app__(self) -> Starlette:
        return self._app

    async def _drain_when_signalled(self, name: str) -> None:
        # Ray stops an ingress replica only once its requests — here, its WebSockets — are
        # over, and stops the recognizers alongside: a drain must come first, from outside.
        try:
            signal = ray.get_actor(name, namespace=APP_NAME)
            await signal.wait.remote()
        except (ValueError, RayActorError):  # no such signal, or whoever held it is gone
            return
        await self._app.state.whisperwire.drain()
        await signal.drained.remote()


@ray.remote(num_cpus=0)
class DrainSignal:
    """Set by `whisperwire serve --ray` on SIGTERM; every ingress replica drains on it.

    Replicas wait on it (``wait``) and report back (``drained``) once their sessions have had
    their finals and closed with 1001; ``pending`` counts those still draining.
    """

    def __init__(self) -> None:
        self._set = asyncio.Event()
        self._waiting = 0

    async def wait(self) -> None:
        self._waiting += 1
        await self._set.wait()

    def set(self) -> None:
        self._set.set()

    def drained(self) -> None:
        self._waiting -= 1

    def pending(self) -> int:
        return self._waiting


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application: ``serve run whisperwire.ray_serve:build_app`` and the YAML's import_path.

    ``args`` are `whisperwire serve` settings by config key; an unknown or invalid one is an
    error naming it, here rather than in a replica.
    """
    return application(dict(args))


def application(
    args: dict[str, Any], *, ingress: dict[str, Any] | None = None, recognizer: dict[str, Any] | None = None
) -> serve.Application:
    """The two deployments bound together, ``ingress`` and ``recognizer`` overriding their options."""
    replica_settings(args)  # fail now, naming the setting, not in a replica's log
    return Ingress.options(**(ingress or {})).bind(Recognizer.options(**(recognizer or {})).bind(args), args)


# --------------------------------------------------------------------------- the proxy


class CloseLostSessions:
    """Proxy middleware: a WebSocket whose ingress replica died gets 1011, not a dropped socket.

    When a replica dies, the Ray Serve proxy ends the request without a close frame, and the
    client sees 1006 (no close at all) — as if the network failed. This closes such a socket
    with 1011 and a reason, as the protocol promises for internal errors.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        state = {"open": False}

        async def tracking_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                state["open"] = False
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "websocket.accept":
                state["open"] = True
            elif message["type"] == "websocket.close":
                state["open"] = False
            await send(message)

        try:
            await self.app(scope, tracking_receive, tracking_send)
        finally:
            if state["open"]:
                with contextlib.suppress(OSError, RuntimeError):  # the client left meanwhile
                    await send({"type": "websocket.close", "code": 1011, "reason": "ingress replica lost"})


def proxy_middlewares() -> list[Middleware]:
    """For $RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=whisperwire.ray_serve:proxy_middlewares."""
    return [Middleware(CloseLostSessions)]
