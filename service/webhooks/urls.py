"""Which URLs a webhook may go to: `https://` in production (`http://` also in development),
and never loopback, link-local, private or otherwise non-public addresses unless the
operator allows them, checked when the endpoint is added and again, after DNS, before every
attempt (a name can be pointed elsewhere later)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from service.core.settings import Settings


class RefusedUrl(ValueError):
    pass


def check_form(url: str, settings: Settings) -> str:
    """The host of `url`, or RefusedUrl saying what is wrong with its form."""
    parts = urlsplit(url)
    allowed = ("https",) if settings.environment == "production" else ("https", "http")
    if parts.scheme not in allowed:
        raise RefusedUrl(f"webhook URLs must use {' or '.join(allowed)}:// here, not {parts.scheme or 'no scheme'}")
    if not parts.hostname:
        raise RefusedUrl("the webhook URL has no host")
    if parts.username or parts.password:
        raise RefusedUrl("the webhook URL may not carry a user name or password")
    return parts.hostname


def _refused_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


async def check(url: str, settings: Settings) -> None:
    """RefusedUrl unless `url` may be delivered to now (its form, then every address of its host)."""
    host = check_form(url, settings)
    if settings.webhook_allow_private_addresses:
        return
    port = urlsplit(url).port or 443
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RefusedUrl(f"the webhook host {host!r} does not resolve: {exc}") from exc
    for info in infos:
        address = str(info[4][0])
        if _refused_address(address):
            raise RefusedUrl(
                f"the webhook host {host!r} resolves to {address}, a private, loopback or link-local address; "
                "the operator allows such addresses with TAILOR_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=1"
            )
