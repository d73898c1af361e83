"""Webhook events into the outbox (service/core/tables.py WebhookDelivery), in the caller's
transaction: an event exists exactly when the change that caused it was committed, so a
crash between the change and the delivery loses nothing (service/webhooks/delivery.py sends).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.ids import new_id, now
from service.core.tables import WebhookDelivery, WebhookEndpoint

# The events Tailor sends, as OpenAI names them.
EVENT_TYPES = (
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "eval.run.succeeded",
    "eval.run.failed",
    "eval.run.canceled",
)


async def record(session: AsyncSession, project_id: str, event_type: str, object_id: str) -> None:
    """One delivery per endpoint of the project that wants `event_type`; the caller commits."""
    endpoints = (await session.execute(select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id))).scalars()
    t = now()
    event = {"id": new_id("evt_"), "object": "event", "created_at": t, "type": event_type, "data": {"id": object_id}}
    for endpoint in endpoints:
        if endpoint.events and event_type not in endpoint.events:
            continue
        session.add(
            WebhookDelivery(
                id=new_id("msg_"),
                endpoint_id=endpoint.id,
                event_type=event_type,
                payload=event,
                status="pending",
                attempts=0,
                next_attempt_at=float(t),
                created_at=t,
            )
        )
