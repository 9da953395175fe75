"""Redis failures as the store's errors: unreachable or refusing -> StorageUnavailable (503), never a 500."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import redis

from api.errors import StorageUnavailable


def translated(method: Callable) -> Callable:
    """Redis unreachable or failing -> StorageUnavailable (503), never a 500."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"The task store (Redis) cannot be reached: {exc}.") from exc
        except redis.RedisError as exc:
            raise StorageUnavailable(f"The task store (Redis) refused the request: {exc}.") from exc

    return call
