"""Concurrency keys: who holds each, who waits for it, and its limit (changed without a restart)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Admin, ServicesDep, Viewer, client_of
from api.json_body import StrictJsonRoute
from api.orchestration.policies import KEY_PATTERN

router = APIRouter(route_class=StrictJsonRoute)

KeyName = Path(pattern=KEY_PATTERN, max_length=200)


class KeyLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(ge=1, le=1000, description="Tasks that may hold the key at once; null: the steps' default.")


@router.get("/keys", summary="Concurrency keys in use")
def list_keys(services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """Every key held, awaited or given a limit: the holding task ids, the waiting ones (FIFO) and the limit."""
    return {"keys": services.store.keys_in_use()}


@router.put("/keys/{key:path}", summary="Set a concurrency key's limit")
def set_key_limit(body: KeyLimit, request: Request, services: ServicesDep, identity: Admin,
                  key: str = KeyName) -> dict[str, Any]:
    """Applies at once on every worker; waiting tasks start as the new limit allows."""
    services.store.set_key_limit(key, body.limit)
    services.audit.record("key_limit", identity, client_of(request), key=key, limit=body.limit)
    services.runner.wake()
    return {"key": key, "limit": body.limit}
