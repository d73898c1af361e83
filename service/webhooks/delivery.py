"""Sending the outbox: every API process runs `deliver_forever`, which claims due deliveries
(one guarded UPDATE each, so two processes never send the same attempt), posts them signed,
and records each outcome.

At-least-once: a delivery stays `pending` until an endpoint answers 2xx, across restarts of
any process (a claim left by a killed process expires). Each attempt carries the same
`webhook-id` and a fresh timestamp and signature. Retries back off about threefold from
TAILOR_WEBHOOK_RETRY_BASE_SECONDS until TAILOR_WEBHOOK_RETRY_FOR_SECONDS after the event,
then the delivery is `failed`. Attempts run concurrently, each bounded by
TAILOR_WEBHOOK_TIMEOUT_SECONDS, so one slow or dead endpoint holds up nobody else's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.core.db import rows_changed
from service.core.ids import now
from service.core.settings import Settings
from service.core.tables import WebhookDelivery, WebhookEndpoint
from service.webhooks import signing, urls

log = logging.getLogger("tailor.webhooks")

POLL_SECONDS = 1.0
BACKOFF_FACTOR = 3.0
MAX_WAIT_SECONDS = 4 * 3600.0
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

Outcome = Callable[[str], None]  # called with "delivered", "retry" or "failed" (a metrics counter)


def next_wait(settings: Settings, attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: base, ×3 each time, at most four hours."""
    return float(min(settings.webhook_retry_base_seconds * BACKOFF_FACTOR ** (attempts - 1), MAX_WAIT_SECONDS))


async def _claim_due(
    session: AsyncSession, limit: int, hold_seconds: float, busy: set[str]
) -> list[tuple[WebhookDelivery, WebhookEndpoint]]:
    """Due deliveries, oldest first, one per endpoint and none of a `busy` endpoint's."""
    t = time.time()
    due = (
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= t,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < t),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit * 4)
    )
    claimed: list[tuple[WebhookDelivery, WebhookEndpoint]] = []
    for delivery, endpoint in (await session.execute(due)).tuples():
        if endpoint.id in busy or len(claimed) >= limit:
            continue
        busy.add(endpoint.id)
        result = await session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery.id,
                WebhookDelivery.status == PENDING,
                or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < t),
            )
            .values(claimed_until=t + hold_seconds)
            .execution_options(synchronize_session=False)
        )
        if rows_changed(result) == 1:
            claimed.append((delivery, endpoint))
    await session.commit()
    return claimed


async def attempt(
    client: httpx.AsyncClient, settings: Settings, delivery: WebhookDelivery, endpoint: WebhookEndpoint
) -> tuple[bool, int | None, str | None]:
    """(delivered, status code, error) of one signed POST."""
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    try:
        await urls.check(endpoint.url, settings)
        headers = signing.headers(endpoint.secret, delivery.id, now(), body)
        response = await client.post(endpoint.url, content=body, headers=headers, timeout=settings.webhook_timeout_seconds)
    except urls.RefusedUrl as exc:
        return False, None, str(exc)
    except httpx.HTTPError as exc:
        return False, None, f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return True, response.status_code, None
    return False, response.status_code, f"answered {response.status_code}: {response.text[:200]}"


async def _send(
    sessionmaker: async_sessionmaker[AsyncSession],
    client: httpx.AsyncClient,
    settings: Settings,
    delivery: WebhookDelivery,
    endpoint: WebhookEndpoint,
    outcome: Outcome,
) -> None:
    delivered, code, error = await attempt(client, settings, delivery, endpoint)
    attempts = delivery.attempts + 1
    next_at = time.time() + next_wait(settings, attempts)
    values: dict[str, object] = {"attempts": attempts, "claimed_until": None, "last_status_code": code, "last_error": error}
    if delivered:
        values |= {"status": DELIVERED, "delivered_at": now()}
        label = "delivered"
    elif next_at > delivery.created_at + settings.webhook_retry_for_seconds:
        values["status"] = FAILED
        label = "failed"
        log.warning("webhook %s to %s: giving up after %d attempts (%s)", delivery.id, endpoint.url, attempts, error)
    else:
        values["next_attempt_at"] = next_at
        label = "retry"
    async with sessionmaker() as session:
        await session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id).values(**values))
        await session.commit()
    outcome(label)


async def deliver_forever(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, outcome: Outcome) -> None:
    """Keep up to TAILOR_WEBHOOK_CONCURRENCY attempts in flight, at most one per endpoint, so
    an endpoint that hangs holds one slot for its timeout and never another endpoint's turn."""
    in_flight: dict[asyncio.Task[None], str] = {}  # attempt -> its endpoint
    hold = settings.webhook_timeout_seconds + 30
    async with httpx.AsyncClient(follow_redirects=False) as client:
        while True:
            claimed: list[tuple[WebhookDelivery, WebhookEndpoint]] = []
            free = settings.webhook_concurrency - len(in_flight)
            try:
                if free > 0:
                    async with sessionmaker() as session:
                        claimed = await _claim_due(session, free, hold, busy=set(in_flight.values()))
            except (SQLAlchemyError, OSError) as exc:
                log.warning("webhook delivery: %s", exc)
            for delivery, endpoint in claimed:
                task = asyncio.create_task(_send(sessionmaker, client, settings, delivery, endpoint, outcome))
                in_flight[task] = endpoint.id
                task.add_done_callback(lambda done: in_flight.pop(done, None))
            await asyncio.sleep(0.05 if claimed else POLL_SECONDS)
