"""The scale-out store (ETL_BACKEND=celery): the same verbs as the local store, state in Redis."""

from api.store.redis.store import RedisStore

__all__ = ["RedisStore"]
