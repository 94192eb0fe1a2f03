"""Job names and payloads, and how surfaces enqueue them (ARCHITECTURE.md, "The flow").

Surfaces never import `workers/`: they enqueue by name. Payloads are pydantic models carried as
JSON (arq's `job_serializer`/`job_deserializer`), never pickle.
"""

from __future__ import annotations

import json
from typing import Any

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from pydantic import BaseModel
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

PLAN_REQUEST = "plan_request"
RUN_PROGRAM = "run_program"


class PlanRequestJob(BaseModel):
    request_id: str


class RunProgramJob(BaseModel):
    run_id: str


def serialize(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("a job payload must be a JSON object")
    return value


def redis_settings(url: str) -> RedisSettings:
    """arq settings from `redis://host:port/db` or `unix:///path/to/redis.sock`.

    Every command retries with backoff for about two minutes when the connection drops, so a
    Redis restart pauses workers and surfaces instead of failing their jobs.
    """
    settings = RedisSettings.from_dsn(url)
    settings.conn_retries = 30
    settings.conn_retry_delay = 1
    settings.retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=70)
    settings.retry_on_error = [RedisConnectionError, RedisTimeoutError, ConnectionError]
    return settings


async def connect(url: str) -> ArqRedis:
    """A Redis pool that enqueues with our JSON serializer."""
    return await create_pool(redis_settings(url), job_serializer=serialize,
                             job_deserializer=deserialize)


async def enqueue(redis: ArqRedis, name: str, payload: BaseModel, *, job_id: str) -> None:
    """Enqueue job `name` once: the same `job_id` enqueued twice runs once (arq dedups by id)."""
    await redis.enqueue_job(name, payload.model_dump(mode="json"), _job_id=job_id)
