"""Request dependencies: the worker's services and the caller's identity and role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.requests import HTTPConnection

from api import sessions
from api.audit import AuditLog
from api.auth import Identity, KeyRing, require
from api.errors import ApiError
from api.runner import Runner
from api.scheduler import CleanupScheduler
from api.settings import Settings
from api.store import TaskStore
from api.trust import client_address

if TYPE_CHECKING:
    from api.admission_group import AdmissionGroup
    from api.orchestration.loop import Orchestrator
    from api.orchestration.pipelines import Pipelines
    from api.orchestration.schedules import Schedules


@dataclass
class Services:
    """What one worker process serves requests with; built at startup, after fork."""

    settings: Settings
    store: TaskStore
    runner: Runner
    scheduler: CleanupScheduler
    keys: KeyRing
    audit: AuditLog
    pipelines: Pipelines | None = None
    schedules: Schedules | None = None
    orchestrator: Orchestrator | None = None
    admission: AdmissionGroup | None = None  # the local store's grouped admission (api/admission_group.py)


# Dependencies are async on purpose: a sync dependency is run in the thread pool, which costs
# more than everything else a short request does.
async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def _presented_key(request: HTTPConnection) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key")


# The two ways to send a key, as the OpenAPI document shows them; the check reads the headers itself.
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


async def authorize(request: Request, role: str) -> Identity:
    """The caller's identity if it has ``role`` (401/403 otherwise, audited): what the role
    dependencies check, callable directly by a route that declares no dependencies."""
    services: Services = request.app.state.services
    try:
        identity = identify(request, services.keys)
        require(identity, role)
    except ApiError as exc:
        services.audit.record("denied", None, client_of(request), method=request.method,
                              path=request.url.path, status=exc.status_code, reason=exc.detail)
        raise
    request.state.identity = identity
    return identity


def _role(role: str):
    # No Security() sub-dependencies: each is one more solve on every request (a third of what
    # FastAPI spent on POST /run); schemas.install_openapi shows the key schemes on the routes
    # that check a role instead.
    async def check(request: Request) -> Identity:
        return await authorize(request, role)

    check.role = role  # type: ignore[attr-defined]
    return check


def checks_role(dependant: Dependant) -> bool:
    """Whether a route's dependencies (at any depth) include a role check."""
    return any(hasattr(sub.call, "role") or checks_role(sub) for sub in dependant.dependencies)


def security_schemes() -> dict[str, dict[str, object]]:
    """The OpenAPI ``securitySchemes`` of the two ways to send a key."""
    return {type(scheme).__name__: scheme.model.model_dump(by_alias=True, exclude_none=True, mode="json")
            for scheme in (_bearer, _api_key)}


# The ``security`` of a route that checks a role (or calls authorize itself).
SECURITY_OPENAPI = {"security": [{"HTTPBearer": []}, {"APIKeyHeader": []}]}


def identify(connection: HTTPConnection, keys: KeyRing) -> Identity:
    """The caller: by API key header, else (keys configured) by dashboard session cookie."""
    presented = _presented_key(connection)
    if presented is None and keys.enabled and sessions.COOKIE in connection.cookies:
        method = connection.scope.get("method", "GET")
        return connection.app.state.sessions.identify(connection, method)
    return keys.identify(presented)


Viewer = Annotated[Identity, Depends(_role("viewer"))]
Operator = Annotated[Identity, Depends(_role("operator"))]
Admin = Annotated[Identity, Depends(_role("admin"))]


def client_of(request: Request) -> str | None:
    """The caller's address: the peer's, or the one a trusted proxy (ETL_TRUSTED_PROXIES) forwarded."""
    peer = request.client.host if request.client else None
    settings: Settings = request.app.state.services.settings
    if not settings.trusted_proxies:
        return peer
    return client_address(peer, request.headers.getlist("x-forwarded-for"), settings)
