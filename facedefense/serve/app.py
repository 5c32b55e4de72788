"""The HTTP app of ``facedefense serve`` (FastAPI): the page, the API and its OpenAPI description.

Routes:

- ``GET /``: the page (one self-contained HTML file, no external asset).
- ``GET /healthz``: liveness and the queue's state (no token needed).
- ``GET /v1/methods``: the loaded defenders, their budgets, and the limits.
- ``POST /v1/protect``: one image in (multipart field ``file``, or the raw bytes), the protected PNG
  out, the per-image budget check in ``X-Facedefense-*`` headers (``?envelope=json``: a JSON
  object with the PNG in base64 instead).
- ``POST /v1/protect/batch``: several images (multipart fields ``files``), a zip of the PNGs and a
  ``manifest.json`` out.
- ``POST /v1/jobs``: images protected in the background (iterative defenders); ``GET
  /v1/jobs/{id}`` reports the progress down to the optimization step, ``GET /v1/jobs/{id}/result``
  hands the PNG (or zip) over, ``DELETE /v1/jobs/{id}`` cancels (`facedefense.serve.jobs`).

``?check=true`` adds each image's PSNR and SSIM against its upload (the library's metrics) to its
facts. Every error is one JSON line ``{"error": "..."}`` with its status code (never a traceback). Each
image holds a place of the bounded queue from its upload to its answer; a full queue answers 503
with ``Retry-After``. A client that disconnects while its image waits frees its place, and an image
not yet started is not computed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import json
import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from facedefense.errors import BudgetViolationError, FaceDefenseError
from facedefense.serve.errors import ServeError
from facedefense.serve.images import Protected
from facedefense.serve.limits import Limits, token_matches
from facedefense.serve.service import MethodsArg, Service

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

log = logging.getLogger("facedefense.serve")

#: The page served at ``/``.
PAGE = Path(__file__).with_name("page.html")
#: Status of an answer nobody receives (the client disconnected), as nginx logs it.
CLIENT_GONE = 499

_ONE_IMAGE = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}, "required": ["file"]}
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "200": {
            "description": "The protected PNG; X-Facedefense-* headers carry the budget check.",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
}
#: The request body of the routes that take several photos (multipart ``files``).
_FILES_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["files"],
            }
        }
    },
}
_SEVERAL_IMAGES = {
    "requestBody": _FILES_BODY,
    "responses": {
        "200": {
            "description": "A zip of the protected PNGs and manifest.json (one entry per image, failures listed).",
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
}


_JOB_UPLOAD = {
    "requestBody": _FILES_BODY,
}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one form of every error answer: ``{"error": "one line"}``."""
    line = message.strip().splitlines()[0] if message.strip() else "error"
    return JSONResponse({"error": line}, status_code=status, headers=headers)


def create_app(methods: MethodsArg = None, limits: Limits | None = None, *, token: str | None = None,
               keep: str | Path | None = None, service: Service | None = None) -> FastAPI:  # fmt: skip
    """Build the app; the defenders are loaded here, once.

    Args:
        methods: defender names (``["rid"]``), or name -> options (``{"rid": {"checkpoint": "rid.bin"}}``),
            or name -> a defender instance; None: the demo network, which protects nothing.
        limits: upload, pixel, queue and batching limits ([`Limits`][facedefense.serve.limits.Limits]).
        token: when set, every ``/v1`` request must send ``Authorization: Bearer TOKEN``.
        keep: a folder receiving every protected PNG and ``served.jsonl``; None: nothing written.
        service: an already built [`Service`][facedefense.serve.service.Service] (the other
            arguments are then ignored).
    """
    from contextlib import asynccontextmanager

    service = service or Service(methods, limits, token=token, keep=keep)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        service.close()

    from facedefense import __version__

    app = FastAPI(
        title="facedefense",
        version=__version__,
        summary="Protect portrait photos against diffusion-model personalization and editing.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/healthz", summary="Liveness and queue state")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "methods": list(service.methods),
            "demo": service.demo,
            "queue": {"admitted": service.admitted, "size": service.limits.queue_size},
            "token_required": bool(service.token),
            "served": service.served,
            "forward_passes": {
                name: {"calls": sum(loaded.batches.values()), "images": sum(size * n for size, n in loaded.batches.items())}
                for name, loaded in service.methods.items()
            },
        }

    @app.get("/v1/methods", summary="The loaded defenders and the limits")
    async def methods_route(request: Request) -> Response:
        return await guarded(request, lambda: _methods(service))

    @app.post("/v1/protect", summary="Protect one image", openapi_extra=_ONE_IMAGE)
    async def protect(request: Request, method: str | None = None, envelope: str | None = None,
                      filename: str | None = None, check: bool = False) -> Response:  # fmt: skip
        return await guarded(request, lambda: _protect_one(service, request, method, envelope, filename, check))

    @app.post("/v1/protect/batch", summary="Protect several images into a zip", openapi_extra=_SEVERAL_IMAGES)
    async def protect_batch(request: Request, method: str | None = None, check: bool = False) -> Response:
        return await guarded(request, lambda: _protect_many(service, request, method, check))

    @app.post("/v1/jobs", summary="Protect images in the background (iterative defenders)", status_code=202,
              openapi_extra=_JOB_UPLOAD)  # fmt: skip
    async def start_job(request: Request, method: str | None = None, check: bool = False) -> Response:
        return await guarded(request, lambda: _start_job(service, request, method, check))

    @app.get("/v1/jobs/{job_id}", summary="A job's progress")
    async def job_state(request: Request, job_id: str) -> Response:
        return await guarded(request, lambda: _job_state(service, job_id))

    @app.get("/v1/jobs/{job_id}/result", summary="A finished job's PNG (or zip for several images)")
    async def job_result(request: Request, job_id: str) -> Response:
        return await guarded(request, lambda: _job_result(service, job_id))

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a job, or forget a finished one")
    async def delete_job(request: Request, job_id: str) -> Response:
        return await guarded(request, lambda: _delete_job(service, job_id))

    async def guarded(request: Request, handler: Callable[[], Coroutine[Any, Any, Response]]) -> Response:
        """Check the token, run ``handler``, and turn every failure into one JSON line."""
        if not token_matches(service.token, request.headers.get("authorization")):
            return error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'", {"WWW-Authenticate": "Bearer"})
        try:
            return await handler()
        except ServeError as exc:
            return error(exc.status, exc.message, exc.headers)
        except _ClientGone:
            return Response(status_code=CLIENT_GONE)
        except BudgetViolationError as exc:  # never expected: a bug of the method
            log.exception("budget violation")
            return error(500, f"internal error: {exc}")
        except FaceDefenseError as exc:
            return error(422, str(exc))
        except MemoryError:
            return error(503, "out of memory: try a smaller image or fewer at once", {"Retry-After": "5"})
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, answered in one line
            log.exception("internal error")
            return error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    return app


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _methods(service: Service) -> Response:
    limits = service.limits
    return JSONResponse({
        "methods": [loaded.describe() for loaded in service.methods.values()],
        "demo": service.demo,
        "limits": {
            "max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels, "max_files": limits.max_files,
            "queue_size": limits.queue_size, "max_batch": limits.max_batch, "max_wait_ms": limits.max_wait_ms,
            "png_level": limits.png_level,
        },
    })  # fmt: skip


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    too_large = ServeError(413, f"upload over this service's limit of {limit:,} bytes")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(request: Request, service: Service, field: str, *, also: str | None = None) -> list[tuple[str | None, bytes]]:
    """``(file name, bytes)`` of the images of a request: multipart parts named ``field`` (or
    ``also``), or the raw body (``?filename=`` names it). Everything stays in memory."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    limits = service.limits
    body = await _read_body(request, limits.max_upload_bytes)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        if kind in ("application/x-www-form-urlencoded", "application/json", "text/plain") and body:
            raise ServeError(415, f"send the image as multipart/form-data (field '{field}') or as the raw body, not {kind}")
        return [(request.query_params.get("filename"), body)]

    async def stream():  # type: ignore[no-untyped-def]
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=limits.max_files, max_fields=16)
    parser.spool_max_size = limits.max_upload_bytes + 1  # the parts stay in memory, never in a temporary file
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        status = 413 if "Too many files" in exc.message else 400
        raise ServeError(status, f"bad multipart upload: {exc.message}") from exc
    parts = [item for name in (field, also) if name for item in form.getlist(name) if isinstance(item, UploadFile)]
    if not parts:
        raise ServeError(400, f"no image in the upload: send it in the multipart field '{field}'")
    files = []
    for part in parts:
        part.file.seek(0)
        files.append((part.filename, part.file.read()))
        await part.close()
    return files


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body was read: only ``http.disconnect`` comes next)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue


async def _until_done(watcher: asyncio.Future, future: Any) -> Any:
    """The result of a runner's ``future``; `_ClientGone` (the future cancelled: an image not yet
    started is not computed) when ``watcher`` sees the client leave first."""
    waiter = asyncio.wrap_future(future)
    done, _ = await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if waiter in done:
        return waiter.result()
    future.cancel()
    waiter.cancel()
    raise _ClientGone


async def _protect_upload(service: Service, watcher: asyncio.Future, method_name: str | None,
                          filename: str | None, data: bytes, check: bool = False) -> Protected:  # fmt: skip
    method = service.method(method_name)
    loaded = await run_in_threadpool(service.decode, data, filename)
    try:
        future = method.runner.submit(loaded.pixels)
    except RuntimeError as exc:
        raise ServeError(503, str(exc), {"Retry-After": str(service.limits.retry_after_s)}) from exc
    protected, stats = await _until_done(watcher, future)
    return await run_in_threadpool(service.finish, method, loaded, protected, stats, check)


def _headers(result: Protected) -> dict[str, str]:
    facts = result.facts
    ascii_name = result.name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return {
        "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(result.name)}",
        "X-Facedefense-Method": str(facts.get("method", "")),
        "X-Facedefense-Linf-Gray-Levels": f"{facts['linf_gray_levels']:g}",
        "X-Facedefense-Within-Budget": "true" if facts.get("within_budget") else "false",
        "X-Facedefense-Unchanged": "true" if facts.get("unchanged") else "false",
        "X-Facedefense-Demo": "true" if facts.get("demo") else "false",
        "X-Facedefense-Facts": json.dumps(facts, ensure_ascii=True, separators=(",", ":")),
    }


async def _protect_one(service: Service, request: Request, method_name: str | None, envelope: str | None,
                       filename: str | None, check: bool = False) -> Response:  # fmt: skip
    if envelope not in (None, "", "json"):
        raise ServeError(400, f"envelope must be 'json' (or left out for the PNG itself), got {envelope!r}")
    method = service.method(method_name)
    with service.admit():
        uploads = await _uploads(request, service, "file")
        if len(uploads) != 1:
            raise ServeError(400, f"/v1/protect takes one image, got {len(uploads)}; use /v1/protect/batch")
        name, data = uploads[0]
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            result = await _protect_upload(service, watcher, method.name, filename or name, data, check)
        finally:
            watcher.cancel()
    budget = {"eps": method.defender.config.eps, "eps_gray_levels": round(method.defender.config.eps * 255, 4)}
    if envelope == "json":
        body = {**result.facts, "budget": budget, "png_base64": base64.b64encode(result.png).decode("ascii")}
        return JSONResponse(body)
    headers = _headers(result)
    headers["X-Facedefense-Eps-Gray-Levels"] = f"{budget['eps_gray_levels']:g}"
    return Response(result.png, media_type="image/png", headers=headers)


async def _protect_many(service: Service, request: Request, method_name: str | None, check: bool = False) -> Response:
    method = service.method(method_name)
    with service.admit():  # the upload's place; each image then takes its own
        uploads = await _uploads(request, service, "files")
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        with service.admit(len(uploads)):
            outcomes = await asyncio.gather(
                *(_protect_upload(service, watcher, method.name, name, data, check) for name, data in uploads),
                return_exceptions=True,
            )
    finally:
        watcher.cancel()
    if any(isinstance(outcome, _ClientGone) for outcome in outcomes):
        raise _ClientGone
    failures = []
    results = []
    for (name, _), outcome in zip(uploads, outcomes):
        if isinstance(outcome, ServeError):
            failures.append({"input": name, "status": outcome.status, "error": outcome.message})
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            results.append(outcome)
    return _zip_answer(method, results, failures)


def _zip_answer(method: Any, results: list[Protected], failures: list[dict[str, Any]]) -> Response:
    """A zip of the PNGs and ``manifest.json`` (method, budget, versions, one entry per image, the
    failures); an error when no image succeeded."""
    from facedefense.batch import versions

    failures = list(failures)
    images, names = [], set()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as bundle:
        for outcome in results:
            if outcome.name in names:
                failures.append({"input": outcome.facts["input"], "status": 400,
                                 "error": f"another upload is also written as {outcome.name}"})  # fmt: skip
                continue
            names.add(outcome.name)
            bundle.writestr(outcome.name, outcome.png)
            images.append(outcome.facts)
        if not images:
            first = failures[0] if failures else {"status": 422, "error": "no image was protected"}
            raise ServeError(first["status"], first["error"])
        eps = method.defender.config.eps
        manifest = {
            "command": "serve",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "method": method.manifest_entry(),
            "budget": {"eps": eps, "eps_gray_levels": round(eps * 255.0, 4)},
            "versions": versions(),
            "images": images,
            "failures": failures,
        }
        bundle.writestr("manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")
    return Response(archive.getvalue(), media_type="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="protected.zip"'})  # fmt: skip


async def _start_job(service: Service, request: Request, method_name: str | None, check: bool = False) -> Response:
    method = service.method(method_name)
    with service.admit():  # the upload's place; the job then holds one per image
        uploads = await _uploads(request, service, "files", also="file")
    job = service.jobs.start(method, uploads, check=check)
    return JSONResponse(job.describe(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


async def _job_state(service: Service, job_id: str) -> Response:
    return JSONResponse(service.jobs.get(job_id).describe())


async def _job_result(service: Service, job_id: str) -> Response:
    job = service.jobs.get(job_id)
    state = job.describe()
    if job.status != "done":
        raise ServeError(409, f"job {job_id} is {job.status}: {state['done']} of {state['images']} image(s) done")
    if len(job.uploads) == 1 and job.results:
        result = job.results[0]
        headers = _headers(result)
        headers["X-Facedefense-Eps-Gray-Levels"] = f"{job.method.defender.config.eps * 255:g}"
        return Response(result.png, media_type="image/png", headers=headers)
    return await run_in_threadpool(_zip_answer, job.method, list(job.results), list(job.failures))


async def _delete_job(service: Service, job_id: str) -> Response:
    return JSONResponse(service.jobs.delete(job_id).describe())
