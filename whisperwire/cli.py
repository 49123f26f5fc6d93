"""The `whisperwire` command: serve, stream."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
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
        default=usable_cores(),
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
    serve.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for finals")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ray = serve.add_argument_group("Ray Serve", "pip install 'whisperwire[ray]'; see docs/ray.md")
    ray.add_argument("--ray", action="store_true", help="serve through Ray Serve: ingress and recognizer deployments")
    ray.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="join this Ray cluster ('auto': the one this node belongs to) [start one on this machine]",
    )
    ray.add_argument("--ingress-replicas", type=int, metavar="N", help="fixed number [autoscale; 1 on one machine]")
    ray.add_argument("--recognizer-replicas", type=int, metavar="N", help="fixed number [autoscale; 1 on one machine]")
    ray.add_argument(
        "--inference-workers",
        type=int,
        default=4,
        metavar="N",
        help="recognitions one ingress replica keeps in flight [%(default)s]",
    )
    serve.set_defaults(run=_serve)

    from .client import add_stream_arguments, run_stream

    stream = commands.add_parser("stream", help="stream an audio file to a server and print transcripts")
    add_stream_arguments(stream)
    stream.set_defaults(run=run_stream)
    return parser


def usable_cores() -> int:
    # CTranslate2's own default (min(4, all cores)) ignores CPU affinity and container cpusets.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def api_keys_with_env(given: list[str]) -> tuple[str, ...]:
    """The keys given, then those of $WHISPERWIRE_API_KEY, without repeats."""
    from_env = [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    return tuple(dict.fromkeys([*given, *from_env]))


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = api_keys_with_env(args.api_key)
    if not keys:
        if not is_loopback_host(args.host) and not args.allow_open:
            print(
                f"error: refusing to serve without API keys on {args.host}; give --api-key "
                f"(or ${API_KEY_ENV}), or --allow-open to serve open on purpose",
                file=sys.stderr,
            )
            return 2
        log.warning("NO API KEYS: anyone who can reach %s:%d can use this server", args.host, args.port)
    if args.ray:
        return _serve_on_ray(args, keys)

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
    config = ServerConfig(api_keys=keys, limits=limits, drain_timeout_s=args.drain_timeout)
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


# A one-machine Ray cluster started by `serve --ray`. Read when ray is first imported, so set
# before that: cluster mode off keeps Ray's own ports on 127.0.0.1 (ray.init otherwise binds
# them to every interface, for other nodes, which a one-machine cluster has none of); no usage
# reporting; and the proxy middleware that closes a lost ingress replica's sockets with 1011.
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "whisperwire.ray_serve:proxy_middlewares",
}


def _serve_on_ray(args: argparse.Namespace, keys: tuple[str, ...]) -> int:
    local = args.ray_address is None
    if local:
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
    try:
        from .ray_serve import APP_NAME, DrainSignal, WhisperwireArgs, application  # says what to install
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    app_args = WhisperwireArgs(
        model=args.model,
        device=args.device,
        compute_type=args.compute_type,
        cpu_threads=args.cpu_threads,
        cache_dir=args.cache_dir,
        api_keys=list(keys),
        allow_open=True,  # checked above against --host, as for one process
        metadata_timeout_s=args.metadata_timeout,
        idle_timeout_s=args.idle_timeout,
        max_frame_bytes=args.max_frame_bytes,
        drain_timeout_s=args.drain_timeout,
        inference_workers=args.inference_workers,
        drain_signal=f"{APP_NAME}-drain-{os.getpid()}",
    )
    import ray
    from ray import serve

    ingress: dict[str, object] = {}
    recognizer: dict[str, object] = {}
    if args.ingress_replicas:
        ingress.update(num_replicas=args.ingress_replicas, autoscaling_config=None)
    if args.recognizer_replicas:
        recognizer.update(num_replicas=args.recognizer_replicas, autoscaling_config=None)
    if local:
        # One machine: fixed replicas (autoscaling has no more cores to add), the recognizers
        # share the cores, and the ingress (VAD, decoding) runs beside them rather than
        # waiting for a core of its own.
        cores = usable_cores()
        replicas = args.recognizer_replicas or 1
        ingress.update(num_replicas=args.ingress_replicas or 1, autoscaling_config=None, ray_actor_options={"num_cpus": 0})
        recognizer.update(num_replicas=replicas, autoscaling_config=None, ray_actor_options={"num_cpus": cores / replicas})
        app_args = app_args.model_copy(update={"cpu_threads": max(1, args.cpu_threads // replicas)})
        ray.init(num_cpus=cores, object_store_memory=256 * 1024**2, include_dashboard=False)
    else:
        # A cluster: each recognizer's threads follow the CPUs Ray reserved for it on its node.
        app_args = app_args.model_copy(update={"cpu_threads": 0})
        ray.init(address=args.ray_address)

    stop = threading.Event()
    try:
        drain = DrainSignal.options(name=app_args.drain_signal, namespace=APP_NAME).remote()
        serve.start(http_options={"host": args.host, "port": args.port})
        try:
            serve.run(application(app_args, ingress=ingress, recognizer=recognizer), name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:  # a replica failed to start: bad model, device, keys
            print(f"error: could not deploy on Ray Serve: {exc}", file=sys.stderr)
            return 1
        log.info("on Ray Serve: listening on ws://%s:%d/v1/websocket", args.host, args.port)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        # As one process does: finals of buffered speech, then 1001; recognizers stop last.
        log.info("draining sessions")
        drain.set.remote()
        deadline = time.monotonic() + args.drain_timeout + 5
        while ray.get(drain.pending.remote()) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        serve.delete(APP_NAME)
        return 0
    finally:
        if local:
            serve.shutdown()
            ray.shutdown()


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
