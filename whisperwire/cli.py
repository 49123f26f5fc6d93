"""The `whisperwire` command: serve, stream."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from types import FrameType

import numpy as np
import uvicorn

from . import __version__
from .client import is_loopback_host
from .protocol import SessionLimits

log = logging.getLogger("whisperwire")

API_KEY_ENV = "WHISPERWIRE_API_KEY"


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

    serve = commands.add_parser("serve", help="run the WebSocket server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on [%(default)s]")
    serve.add_argument("--port", type=int, default=8000, help="[%(default)s]")
    serve.add_argument(
        "--model",
        default="tiny.en",
        help="tiny.en (embedded, default), base (multilingual, offline), a CTranslate2 model "
        "directory, or a hub id (needs the network)",
    )
    serve.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    serve.add_argument("--compute-type", default="default", help="int8 on cpu, float16 on cuda by default")
    serve.add_argument(
        "--cpu-threads",
        type=int,
        default=_usable_cores(),
        help="threads for CTranslate2 on cpu [the cores this process may use]",
    )
    serve.add_argument("--cache-dir", default=None, help="where the base model is assembled")
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        help=f"accepted API key; repeat for several (also ${API_KEY_ENV}, comma-separated)",
    )
    serve.add_argument("--allow-open", action="store_true", help="serve without API keys on a non-loopback address")
    serve.add_argument(
        "--metadata-timeout",
        type=float,
        default=SessionLimits.metadata_timeout_s,
        help="seconds a client has to send its metadata [%(default)s]",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=SessionLimits.idle_timeout_s,
        help="seconds without any frame before a session is closed [%(default)s]",
    )
    serve.add_argument(
        "--max-frame-bytes",
        type=int,
        default=SessionLimits.max_frame_bytes,
        help="largest WebSocket message accepted [%(default)s]",
    )
    serve.add_argument(
        "--context-prompt",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="give Whisper the previous utterance's text as context, after the client's prompt [off]",
    )
    serve.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for finals")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)

    from .client import add_stream_arguments, run_stream

    stream = commands.add_parser("stream", help="stream an audio file to a server and print transcripts")
    add_stream_arguments(stream)
    stream.set_defaults(run=run_stream)
    return parser


def _usable_cores() -> int:
    # CTranslate2's own default (min(4, all cores)) ignores CPU affinity and container cpusets.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    from_env = [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    return tuple(dict.fromkeys([*args.api_key, *from_env]))


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = _api_keys(args)
    if not keys:
        if not is_loopback_host(args.host) and not args.allow_open:
            print(
                f"error: refusing to serve without API keys on {args.host}; give --api-key "
                f"(or ${API_KEY_ENV}), or --allow-open to serve open on purpose",
                file=sys.stderr,
            )
            return 2
        log.warning("NO API KEYS: anyone who can reach %s:%d can use this server", args.host, args.port)

    from .engine import load_engine
    from .models import ModelError
    from .server import ServerConfig, create_app

    try:
        engine = load_engine(
            args.model,
            device=args.device,
            compute_type=args.compute_type,
            cpu_threads=args.cpu_threads,
            cache_dir=args.cache_dir,
        )
        # The first inference pays for lazy initialisation; pay it before the first client does.
        engine.transcribe(np.zeros(16_000, dtype=np.float32), _warmup_options())
    except ModelError as exc:
        print(f"error: could not load model {args.model!r}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for bad weights or devices
        print(f"error: could not load model {args.model!r} on {args.device}: {exc}", file=sys.stderr)
        return 1

    limits = SessionLimits(
        metadata_timeout_s=args.metadata_timeout,
        idle_timeout_s=args.idle_timeout,
        max_frame_bytes=args.max_frame_bytes,
    )
    config = ServerConfig(
        api_keys=keys,
        limits=limits,
        drain_timeout_s=args.drain_timeout,
        context_prompt=args.context_prompt,
    )
    app = create_app(engine, config)
    log.info("model %s loaded on %s; listening on ws://%s:%d/v1/websocket", args.model, args.device, args.host, args.port)
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            ws="websockets-sansio",
            ws_max_size=limits.max_frame_bytes,
            ws_ping_interval=20.0,
            ws_ping_timeout=20.0,
            log_level=args.log_level,
            timeout_graceful_shutdown=5,
        )
    )
    server.run()
    return 0


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
