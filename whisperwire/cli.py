"""The `whisperwire` command: serve, stream, mic."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from . import __version__
from .client import is_loopback_host
from .logs import configure_logging
from .settings import Settings, SettingsError, add_arguments, batch, env_of, load_settings, threads_per_worker, usable_cores, workers

log = logging.getLogger("whisperwire")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisperwire", description="Real-time speech-to-text over WebSocket.")
    parser.add_argument("--version", action="version", version=f"whisperwire {__version__}")
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser(
        "serve",
        help="run the WebSocket server",
        description="Each setting comes from its flag, else its environment variable, else the "
        "config file, else its default (docs/serving.md has the table).",
    )
    add_arguments(serve)
    serve.set_defaults(run=_serve)

    from .console import add_stream_arguments, run_stream

    stream = commands.add_parser("stream", help="stream an audio file to a server and print transcripts")
    add_stream_arguments(stream)
    stream.set_defaults(run=run_stream)

    from .mic import add_mic_arguments, run_mic

    mic = commands.add_parser("mic", help="stream the microphone to a server and show transcripts live")
    add_mic_arguments(mic)
    mic.set_defaults(run=run_mic)
    commands.add_parser(
        "bench",
        help="measure final latency, partial cadence, WER and capacity with N live streams "
        "(benchmarks/bench.py of a checkout; BENCHMARKS.md)",
        add_help=False,
    )
    return parser


BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def _bench(argv: list[str]) -> int:
    """The benchmark is a tool of the repository, not of the installed package: run the
    checkout's benchmarks/bench.py."""
    if not BENCH.is_file():
        print(
            "error: whisperwire bench runs benchmarks/bench.py of a whisperwire checkout "
            f"(installed with pip install -e); there is none at {BENCH}",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(BENCH), *argv])


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings({k: v for k, v in vars(args).items() if k != "run"})
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, secrets=settings.api_keys)
    if settings.log_level != "debug":
        # faster-whisper logs every call at INFO ("Processing audio with duration ..."): noise here.
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    if not settings.api_keys:
        if not is_loopback_host(settings.host) and not settings.allow_open:
            print(
                f"error: refusing to serve without API keys on {settings.host}; give --api-key "
                f"(or ${env_of('api_keys')}, or --api-key-file), or --allow-open to serve open on purpose",
                file=sys.stderr,
            )
            return 2
        log.warning("NO API KEYS: anyone who can reach %s:%d can use this server", settings.host, settings.port)
    if settings.ray:
        return _serve_on_ray(settings)

    from .capacity import prior_cost, probe_recognition_s
    from .engine import load_warm_engine
    from .models import ModelError
    from .server import create_app

    try:  # before the model loads: a busy port fails in a second, with one line
        listener = listening_socket(settings.host, settings.port)
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {os.strerror(exc.errno) if exc.errno else exc}", file=sys.stderr)
        return 1
    try:
        engine = load_warm_engine(settings, cpu_threads=threads_per_worker(settings), replicas=workers(settings))
    except ModelError as exc:
        print(f"error: could not load model {settings.model!r}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for bad weights or devices
        print(f"error: could not load model {settings.model!r} on {settings.device}: {exc}", file=sys.stderr)
        return 1

    # Admission's prior for what a stream costs, until the streams themselves are measured.
    cost = prior_cost(probe_recognition_s(engine)) if settings.stream_cost is None else settings.stream_cost or None
    app = create_app(engine, settings.server_config(stream_cost_prior=cost, inference_workers=workers(settings), inference_batch=batch(settings)))
    scheme = "wss" if settings.tls else "ws"
    log.info(
        "model %s loaded on %s (%d workers x %d threads, finals in batches of up to %d); listening on %s://%s:%d/v1/websocket; %s",
        settings.model, settings.device, workers(settings), threads_per_worker(settings), batch(settings),
        scheme, settings.host, settings.port, default_language_note(engine.info),
    )
    DrainingServer(uvicorn_config(app, settings)).run(sockets=[listener])
    return 0


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port and listening, for uvicorn to serve on."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=2048)


def default_language_note(info: Any) -> str:  # noqa: ANN401 - engine.ModelInfo
    """What a session that names no audio_language gets (PROTOCOL.md's default, en)."""
    if info.multilingual:
        return 'sessions without audio_language are transcribed as English: send "auto" to detect'
    return "English only"


# A one-machine Ray cluster started by `serve --ray`. Read when ray is first imported, so set
# before that: cluster mode off keeps Ray's own ports on 127.0.0.1 (ray.init otherwise binds
# them to every interface, for other nodes, which a one-machine cluster has none of); no usage
# reporting; and the proxy middleware that closes a lost ingress replica's sockets with 1011.
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "whisperwire.ray_serve:proxy_middlewares",
}


def _serve_on_ray(settings: Settings) -> int:
    local = settings.ray_address is None
    if local:
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
    try:
        from .ray_serve import APP_NAME, DrainSignal, application  # says what to install
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import ray
    from ray import serve

    # The replicas read their settings anew on their nodes (environment, config file); these
    # are what this command was given, the keys already checked against --host above.
    given = settings.model_dump(
        mode="json", exclude_unset=True, exclude={"ray", "ray_address", "host", "port", "api_key_file", "ssl_certfile", "ssl_keyfile"}
    )
    given["allow_open"] = True
    drain_signal = f"{APP_NAME}-drain-{os.getpid()}"
    ingress: dict[str, Any] = {}
    recognizer: dict[str, Any] = {}
    if settings.ingress_replicas:
        ingress.update(num_replicas=settings.ingress_replicas, autoscaling_config=None)
    if settings.recognizer_replicas:
        recognizer.update(num_replicas=settings.recognizer_replicas, autoscaling_config=None)
    if local:
        # One machine: fixed replicas (autoscaling has no more cores to add), the recognizers
        # share the cores (each one's CTranslate2 threads follow its share), and the ingress
        # (VAD, decoding) runs beside them rather than waiting for a core of its own.
        cores = usable_cores()
        replicas = settings.recognizer_replicas or 1
        ingress.update(num_replicas=settings.ingress_replicas or 1, autoscaling_config=None, ray_actor_options={"num_cpus": 0})
        recognizer.update(num_replicas=replicas, autoscaling_config=None, ray_actor_options={"num_cpus": cores / replicas})
        ray.init(num_cpus=cores, object_store_memory=256 * 1024**2, include_dashboard=False)
    else:
        ray.init(address=settings.ray_address)

    stop = threading.Event()
    try:
        drain = DrainSignal.options(name=drain_signal, namespace=APP_NAME).remote()
        serve.start(http_options={"host": settings.host, "port": settings.port})
        try:
            app = application({**given, "drain_signal": drain_signal}, ingress=ingress, recognizer=recognizer)
            serve.run(app, name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:  # a replica failed to start: bad model, device, keys
            print(f"error: could not deploy on Ray Serve: {exc}", file=sys.stderr)
            return 1
        log.info("on Ray Serve: listening on ws://%s:%d/v1/websocket", settings.host, settings.port)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        # As one process does: finals of buffered speech, then 1001; recognizers stop last.
        log.info("draining sessions")
        drain.set.remote()
        deadline = time.monotonic() + settings.drain_timeout + 5
        while ray.get(drain.pending.remote()) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        serve.delete(APP_NAME)
        return 0
    finally:
        if local:
            serve.shutdown()
            ray.shutdown()


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """How `serve` runs the app under uvicorn; logging stays with logs.configure_logging."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        log_config=None,
        log_level=settings.log_level,
        access_log=settings.access_log,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        timeout_graceful_shutdown=5,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains sessions (finals, then 1001) before exiting."""

    _draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self.should_exit:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        self._draining = True
        log.info("received %s: draining sessions", signal.Signals(sig).name)
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

    async def _drain(self) -> None:
        state = self.config.app.state.whisperwire
        await state.drain()
        self.should_exit = True


if __name__ == "__main__":
    sys.exit(main())
