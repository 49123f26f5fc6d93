"""The `whisperwire` command: serve, stream, mic."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from types import FrameType
from typing import Any

import numpy as np
import uvicorn

from . import __version__
from .client import is_loopback_host
from .logs import configure_logging
from .settings import Settings, SettingsError, add_arguments, env_of, load_settings, usable_cores

log = logging.getLogger("whisperwire")


def main(argv: list[str] | None = None) -> int:
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

    from .client import add_stream_arguments, run_stream

    stream = commands.add_parser("stream", help="stream an audio file to a server and print transcripts")
    add_stream_arguments(stream)
    stream.set_defaults(run=run_stream)

    from .mic import add_mic_arguments, run_mic

    mic = commands.add_parser("mic", help="stream the microphone to a server and show transcripts live")
    add_mic_arguments(mic)
    mic.set_defaults(run=run_mic)
    from .bench import add_bench_arguments, run_bench

    bench = commands.add_parser(
        "bench",
        help="measure final latency, partial cadence, WER and capacity with N live streams (BENCHMARKS.md)",
    )
    add_bench_arguments(bench)
    bench.set_defaults(run=run_bench)
    return parser


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

    from .engine import load_engine
    from .models import ModelError
    from .server import ServerConfig, create_app

    try:
        engine = load_engine(
            settings.model,
            device=settings.device,
            compute_type=settings.compute_type,
            cpu_threads=settings.cpu_threads or usable_cores(),
            cache_dir=settings.cache_dir,
            fit_window=settings.encoder_window == "fit",
        )
        # The first inference pays for lazy initialisation; pay it before the first client does.
        engine.transcribe(np.zeros(16_000, dtype=np.float32), _warmup_options())
    except ModelError as exc:
        print(f"error: could not load model {settings.model!r}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for bad weights or devices
        print(f"error: could not load model {settings.model!r} on {settings.device}: {exc}", file=sys.stderr)
        return 1

    config = ServerConfig(
        api_keys=settings.api_keys,
        allowed_origins=settings.allowed_origins,
        limits=settings.limits,
        send_buffer_bytes=settings.send_buffer_bytes,
        drain_timeout_s=settings.drain_timeout,
        max_sessions=settings.max_sessions or None,
        max_queue_wait_s=settings.max_queue_wait or None,
        draft_finals=settings.draft_finals,
        context_prompt=settings.context_prompt,
    )
    app = create_app(engine, config)
    scheme = "wss" if settings.tls else "ws"
    log.info(
        "model %s loaded on %s; listening on %s://%s:%d/v1/websocket",
        settings.model, settings.device, scheme, settings.host, settings.port,
    )
    DrainingServer(uvicorn_config(app, settings)).run()
    return 0


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


def _warmup_options():  # noqa: ANN202 - DecodeOptions, imported lazily with the engine
    from .engine import DecodeOptions

    return DecodeOptions(language="en")


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
