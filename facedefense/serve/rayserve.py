"""``facedefense serve --ray``: the same app as a Ray Serve deployment, replicas spread over a cluster.

Each replica builds the app ([`create_app`][facedefense.serve.app.create_app]) when it starts: it
loads the methods once, batches its own concurrent requests, and keeps its own bounded queue and
jobs (a job's progress and result live in the replica that runs it: with several replicas, route a
client's job calls to one replica, or use ``/v1/protect``). Needs ``pip install 'ray[serve]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facedefense.serve.limits import Limits
from facedefense.serve.service import MethodsArg


def ray_application(methods: MethodsArg, limits: Limits, *, token: str | None = None, keep: str | Path | None = None,
                    replicas: int = 1, gpus_per_replica: float = 0.0) -> Any:  # fmt: skip
    """The Ray Serve application: ``replicas`` copies of the app, each with ``gpus_per_replica``
    GPUs (0.5: two replicas share a GPU). Run it with ``ray.serve.run``."""
    try:
        from ray import serve
    except ImportError as exc:
        from facedefense.errors import MissingDependencyError

        raise MissingDependencyError(f"--ray needs Ray Serve ({exc}): pip install 'ray[serve]'") from exc

    @serve.deployment(name="facedefense", num_replicas=replicas, ray_actor_options={"num_gpus": gpus_per_replica})
    @serve.ingress()
    class FaceDefense:
        def __init__(self, methods: MethodsArg, limits: Limits, token: str | None, keep: str | None) -> None:
            self.settings = (methods, limits, token, keep)

        def __serve_build_asgi_app__(self) -> Any:
            from facedefense.serve.app import create_app

            methods, limits, token, keep = self.settings
            return create_app(methods, limits, token=token, keep=keep)

    return FaceDefense.bind(methods, limits, token, str(keep) if keep is not None else None)


def run_on_ray(application: Any, *, host: str, port: int, address: str | None) -> None:
    """Connect to the Ray cluster at ``address`` (None: start a local one), serve ``application`` over
    HTTP on ``host:port`` and block until interrupted."""
    import ray
    from ray import serve

    ray.init(address=address, include_dashboard=False, logging_level="warning", log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application, name="facedefense", route_prefix="/", blocking=True)
