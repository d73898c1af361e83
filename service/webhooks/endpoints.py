"""A project's webhook endpoints (the `tailor webhooks` commands) and their deliveries."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.core.ids import new_id, now
from service.core.outbox import EVENT_TYPES
from service.core.settings import Settings
from service.core.tables import Project, WebhookDelivery, WebhookEndpoint
from service.webhooks import urls
from service.webhooks.signing import new_secret


async def add(session: AsyncSession, settings: Settings, project: str, url: str, events: list[str]) -> WebhookEndpoint:
    """A new endpoint of the project named `project` (its secret is shown once, by the
    caller); RefusedUrl or ValueError when it may not be added."""
    project_id = (await session.execute(select(Project.id).where(Project.name == project))).scalar()
    if project_id is None:
        raise ValueError(f"no project {project!r} (projects are made by `tailor keys create --project {project}`)")
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise ValueError(f"unknown event type {unknown[0]!r}; Tailor sends {', '.join(EVENT_TYPES)}")
    await urls.check(url, settings)
    endpoint = WebhookEndpoint(
        id=new_id("we_"), project_id=project_id, url=url, secret=new_secret(), events=sorted(set(events)), created_at=now()
    )
    session.add(endpoint)
    await session.commit()
    return endpoint


async def listed(session: AsyncSession, project: str | None) -> list[tuple[WebhookEndpoint, str]]:
    """(endpoint, project name), oldest first."""
    query = (
        select(WebhookEndpoint, Project.name)
        .join(Project, Project.id == WebhookEndpoint.project_id)
        .order_by(WebhookEndpoint.seq)
    )
    if project is not None:
        query = query.where(Project.name == project)
    return list((await session.execute(query)).tuples())


async def find(session: AsyncSession, endpoint_id: str) -> WebhookEndpoint | None:
    return (await session.execute(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))).scalar_one_or_none()


async def remove(session: AsyncSession, endpoint: WebhookEndpoint) -> None:
    # Its undelivered events go with it (ON DELETE CASCADE).
    await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id))
    await session.commit()


async def rotate(session: AsyncSession, endpoint: WebhookEndpoint) -> str:
    """A new secret, at once: attempts from now on are signed with it."""
    endpoint.secret = new_secret()
    await session.commit()
    return endpoint.secret


async def deliveries(session: AsyncSession, endpoint_id: str | None, limit: int) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).order_by(WebhookDelivery.seq.desc()).limit(limit)
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    return list((await session.execute(query)).scalars())
