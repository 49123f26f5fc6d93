"""A one-machine Ray cluster for the tests, and whisperwire applications deployed on it.

The cluster runs in the test process (``ray.init``) on loopback only (conftest sets the
environment for that before anything imports ray), with a small budget:
2 logical CPUs, a small object store, no dashboard, no usage reporting. Replicas reserve no
CPUs, so any number of them fit; they share the machine's cores, as the tests' one-process
server does.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any

OBJECT_STORE_BYTES = 128 * 1024 * 1024
_names = itertools.count()
PORT_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RayCluster:
    def __init__(self) -> None:
        import ray
        from ray import serve

        ray.init(
            num_cpus=2,
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=False,
            log_to_driver=False,
        )
        # A port found free may be taken by one of Ray's own processes before the Serve proxy
        # binds it ("Failed to bind to address"): then another port.
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = _free_port()
            try:
                serve.start(http_options={"host": "127.0.0.1", "port": self.port})
                return
            except RuntimeError as error:
                if "bind" not in str(error) or attempt == PORT_ATTEMPTS:
                    raise
                serve.shutdown()

    def close(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()

    def deploy(self, *, ingress_replicas: int = 1, recognizer_replicas: int = 1, **config: Any) -> RayServer:
        return RayServer(self, f"app{next(_names)}", ingress_replicas, recognizer_replicas, config)


class RayServer:
    """One whisperwire application under its own route prefix, reached through the Serve proxy.

    ``config`` takes ServerConfig's keywords, as the tests' start_server does.
    """

    def __init__(self, cluster: RayCluster, name: str, ingress_replicas: int, recognizer_replicas: int, config: dict[str, Any]) -> None:
        self.cluster = cluster
        self.name = name
        self._replicas = (ingress_replicas, recognizer_replicas)
        self.args = {"allow_open": True, "cpu_threads": 2, **_as_args(config)}
        self._config = config

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.cluster.port}/{self.name}/v1/websocket"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.cluster.port}/{self.name}"

    def sibling(self, **config: Any) -> RayServer:
        """Another application on the same cluster with these settings."""
        return self.cluster.deploy(**config)

    def replicas(self, deployment: str) -> list[Any]:
        """Actor handles of this application's replicas of ``deployment`` (Ingress, Recognizer)."""
        import ray

        prefix = f"SERVE_REPLICA::{self.name}#{deployment}#"
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
        return [ray.get_actor(name, namespace="serve") for name in sorted(names)]

    def __enter__(self) -> RayServer:
        from ray import serve

        from whisperwire.ray_serve import application

        ingress, recognizer = self._replicas
        no_cpus = {"num_cpus": 0}
        serve.run(
            application(
                self.args,
                ingress={"num_replicas": ingress, "autoscaling_config": None, "ray_actor_options": no_cpus},
                recognizer={"num_replicas": recognizer, "autoscaling_config": None, "ray_actor_options": no_cpus},
            ),
            name=self.name,
            route_prefix=f"/{self.name}",
        )
        return self

    def __exit__(self, *exc: object) -> None:
        from ray import serve

        serve.delete(self.name)


def _as_args(config: dict[str, Any]) -> dict[str, Any]:
    """ServerConfig keywords as the application's arguments (`whisperwire serve` settings)."""
    args: dict[str, Any] = {}
    if "api_keys" in config:
        args["api_keys"] = list(config["api_keys"])
    if "limits" in config:
        limits = config["limits"]
        args.update(
            metadata_timeout=limits.metadata_timeout_s,
            idle_timeout=limits.idle_timeout_s,
            max_frame_bytes=limits.max_frame_bytes,
        )
    unknown = set(config) - {"api_keys", "limits"}
    if unknown:
        raise TypeError(f"no Ray application setting for {sorted(unknown)}")
    return args
