"""The dashboard at /ui (static page + browser login) and the API docs, all from local assets."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import fastapi_offline
from fastapi import APIRouter, Body, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ServicesDep, Viewer, client_of
from api.errors import ApiError, NotFound
from api.json_body import StrictJsonRoute
from api.sessions import Sessions, is_secure

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
STATIC_URL = "/ui/static"
DOCS_ASSETS_URL = "/docs-assets"
LOG_DOWNLOAD_BATCH = 5000  # lines read per Redis call when a download streams the log
# The page loads only its own files; no inline script, nothing from another origin.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

router = APIRouter(include_in_schema=False, route_class=StrictJsonRoute)


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=500, description="An API key (ETL_API_KEYS).")


@functools.lru_cache(maxsize=1)
def _page() -> bytes:
    return (UI_DIR / "index.html").read_bytes()


def _sessions(request: Request) -> Sessions:
    return request.app.state.sessions


@router.get("/", summary="The dashboard")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui", summary="The dashboard")
async def dashboard() -> HTMLResponse:
    """The single page of the dashboard; it reads the API with the session cookie."""
    return HTMLResponse(_page(), headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/ui/session", summary="Who the browser is logged in as")
async def session(request: Request, services: ServicesDep) -> dict[str, Any]:
    """The session's role, name, expiry and CSRF token; 401 when a login is needed."""
    if not services.keys.enabled:
        identity = services.keys.identify(None)
        return {"auth": False, "role": identity.role, "name": identity.name, "csrf": None, "expires_at": None}
    current = _sessions(request).read(request)
    return {"auth": True, "role": current.identity.role, "name": current.identity.name, "csrf": current.csrf,
            "expires_at": current.expires}


@router.post("/ui/login", summary="Exchange an API key for a session cookie")
async def login(request: Request, response: Response, services: ServicesDep,
                body: Annotated[Login, Body()]) -> dict[str, Any]:
    """Checks the key and sets the HttpOnly session cookie; the key itself is not kept."""
    try:
        identity = services.keys.identify(body.key)
    except ApiError as exc:
        services.audit.record("login_denied", None, client_of(request), reason=exc.detail)
        raise
    issued = _sessions(request).issue(identity, response, secure=is_secure(request))
    services.audit.record("login", identity, client_of(request))
    return {"auth": True, "role": identity.role, "name": identity.name, "csrf": issued.csrf,
            "expires_at": issued.expires}


@router.post("/ui/logout", summary="End the browser session")
async def logout(request: Request, response: Response) -> dict[str, Any]:
    Sessions.clear(response, secure=is_secure(request))
    return {"auth": False}


@router.get("/ui/logs/{task_id}", summary="A task's full log as a file")
def download_log(task_id: str, services: ServicesDep, _: Viewer) -> Response:
    """The whole log (the page shows only its tail)."""
    store = services.store
    task = store.get(task_id)
    path = store.log_path(task_id)
    if path is not None:
        return FileResponse(path, media_type="text/plain; charset=utf-8", filename=f"{task_id}.log")
    if services.settings.backend != "celery" or not task.log_lines:  # local mode: no file, no log
        raise NotFound(f"Task {task_id} has no log file.")

    def lines() -> Iterator[bytes]:
        # Scale-out mode keeps the lines in Redis (no shared folder): sent in batches, never all at once.
        since = 0
        while batch := store.read_log(task_id, since, LOG_DOWNLOAD_BATCH):
            since += len(batch)
            yield "".join(f"{line}\n" for line in batch).encode("utf-8")

    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8",
                             headers={"content-disposition": f'attachment; filename="{task_id}.log"'})


@router.get("/docs", summary="Swagger UI")
async def swagger(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(openapi_url=f"{root}{request.app.openapi_url}",
                               title=f"{request.app.title} - Swagger UI",
                               swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
                               swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png")


@router.get("/redoc", summary="ReDoc")
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - ReDoc",
                          redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
                          redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png", with_google_fonts=False)


def install(app: FastAPI) -> None:
    """The routes plus the two static folders (the dashboard's and the docs' pinned assets)."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=UI_DIR / "static"), name="ui-static")
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
