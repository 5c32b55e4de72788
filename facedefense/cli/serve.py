"""``facedefense serve``: the page and the HTTP API (`facedefense.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from facedefense.cli.common import check_method_paths, friendly_errors

DEMO_BANNER = (
    "DEMO: no --method given, so this serves a tiny RID network with random weights. It exercises the "
    "page and the API but protects NOTHING; serve a real method (e.g. --method rid --checkpoint FILE) for that."
)


def route_options(methods: list[str], given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Give each option to every method whose config has it; an option no method has is an error."""
    from facedefense.config import config_fields
    from facedefense.errors import ConfigError
    from facedefense.registry import get_registry

    registry = get_registry()
    fields = {name: set(config_fields(registry.load("defender", name).Config)) for name in methods}
    routed: dict[str, dict[str, Any]] = {name: {} for name in methods}
    for key, value in given.items():
        takers = [name for name in methods if key in fields[name]]
        if not takers:
            raise ConfigError(f"no method served ({', '.join(methods)}) has an option '{key}'")
        for name in takers:
            routed[name][key] = value
    return routed


@friendly_errors
def serve(
    method: Annotated[
        list[str] | None,
        typer.Option("--method", "-m", help="Defender to serve (repeatable). Default: a demo network that protects nothing."),
    ] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Network weights (amortized defenders).")] = None,
    model: Annotated[str | None, typer.Option(help="Diffusers folder or Hugging Face id (iterative defenders).")] = None,
    eps: Annotated[str | None, typer.Option(help="L-infinity budget in [0,1] units: 8/255 or 0.0314.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimization steps (iterative defenders).")] = None,
    device: Annotated[str | None, typer.Option(help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:N or mps.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16 or float16 (model precision).")] = None,
    option: Annotated[
        list[str] | None, typer.Option("-o", "--option", help="Method option key=value, for every method that has it (repeatable).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 7860,
    token: Annotated[
        str | None,
        typer.Option(help="Clients send 'Authorization: Bearer TOKEN' (default: $FACEDEFENSE_TOKEN; none on loopback).", show_default=False),
    ] = None,
    keep: Annotated[
        Path | None, typer.Option(help="Folder receiving every protected PNG and served.jsonl (default: nothing written).")
    ] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.001, help="Largest request body, in MB.")] = 25.0,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most images per forward pass (amortized defenders).")] = 8,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0, max=10000, help="How long an image waits for others to batch with, in ms.")
    ] = 5.0,
    queue_size: Annotated[
        int, typer.Option("--queue-size", min=1, help="Most images in progress; beyond that requests get 503 + Retry-After.")
    ] = 64,
    png_level: Annotated[
        int, typer.Option("--png-level", min=0, max=9, help="zlib level of the PNG answers, 0-9; the pixels are the same at every level.")
    ] = 6,
    on_ray: Annotated[bool, typer.Option("--ray", help="Serve as a Ray Serve deployment (pip install 'ray[serve]').")] = False,
    address: Annotated[
        str | None, typer.Option(help="With --ray: the Ray cluster to join (default: start a local one).", show_default=False)
    ] = None,
    replicas: Annotated[int, typer.Option(min=1, help="With --ray: copies of the app, each loading the methods.")] = 1,
    gpus_per_replica: Annotated[
        float, typer.Option("--gpus-per-replica", min=0, help="With --ray: GPUs per replica (0.5: two per GPU).")
    ] = 0.0,
) -> None:
    """Serve the protection page and the HTTP API (POST /v1/protect), methods loaded once and kept warm.

    Binds 127.0.0.1 by default; another address needs a token. FACEDEFENSE_MAX_PIXELS limits images as elsewhere.

    Example: facedefense serve --method rid --checkpoint ASDS-eps-8_255.bin --port 7860
    """
    from facedefense.budget import parse_budget
    from facedefense.cli.common import method_options
    from facedefense.errors import ConfigError
    from facedefense.serve.limits import Limits, check_bind, resolve_token

    secret = resolve_token(token)
    check_bind(host, secret)  # before anything loads
    limits = Limits(max_upload_bytes=int(max_upload_mb * 1_000_000), max_batch=max_batch, max_wait_ms=max_wait_ms,
                    queue_size=queue_size, png_level=png_level)  # fmt: skip
    given = method_options(
        option, checkpoint=checkpoint, model=model, eps=parse_budget(eps) if eps is not None else None, steps=steps,
        device=device, dtype=dtype,
    )  # fmt: skip
    names = list(method or [])
    if len(set(names)) != len(names):
        raise ConfigError("a method is named twice; serve each once")
    if given and not names:
        raise ConfigError("method options need --method (the demo network takes none)")
    check_method_paths(given)
    routed = route_options(names, given) if names else None
    if keep is not None:
        from facedefense.io import check_output_dir

        check_output_dir(keep)
    if not on_ray and (address is not None or replicas != 1 or gpus_per_replica):
        raise ConfigError("--address, --replicas and --gpus-per-replica go with --ray")
    if on_ray:
        from facedefense.serve.rayserve import ray_application, run_on_ray

        if routed is None:
            typer.secho(DEMO_BANNER, fg=typer.colors.YELLOW, err=True)
        application = ray_application(routed, limits, token=secret, keep=keep, replicas=replicas,
                                      gpus_per_replica=gpus_per_replica)  # fmt: skip
        typer.echo(f"serving on Ray Serve at http://{host}:{port} ({replicas} replica(s); page: /, API: /docs)", err=True)
        run_on_ray(application, host=host, port=port, address=address)
        return
    try:
        import uvicorn
    except ImportError as exc:
        from facedefense.errors import MissingDependencyError

        raise MissingDependencyError("facedefense serve needs uvicorn: pip install 'facedefense[serve]'") from exc
    from facedefense.serve import create_app

    if routed is None:
        typer.secho(DEMO_BANNER, fg=typer.colors.YELLOW, err=True)
    from facedefense.progress import set_progress

    set_progress(False)  # no bar per request in the server's log (jobs still hear every step)
    app = create_app(routed, limits, token=secret, keep=keep)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"serving {', '.join(app.state.service.methods)} on http://{shown}:{port} (page: /, API: /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command()(serve)
