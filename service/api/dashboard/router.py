"""The web dashboard: static files (plain ES modules, no build step) served from the package.

`/` answers index.html and `/ui/…` the files beside it. The page does everything through the
public `/v1` API with the user's key (sent as a bearer header, kept in session storage),
so nothing it shows is out of reach of the SDK. Every answer carries a strict
Content-Security-Policy: scripts, styles and connections from this origin only, no inline
script or style, never framed.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from service.core.errors import NotFound

STATIC = Path(__file__).resolve().parent / "static"
ASSET_PREFIX = "/ui/"

# img-src allows data: and blob: for the charts' canvases exported as images (none today)
# and a downloaded file's object URL; everything else is this origin or nothing.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
    # Revalidated on every load (a 304 when unchanged): a new version is seen at once.
    "cache-control": "no-cache",
}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html", ".md": "text/plain"}


def _assets() -> dict[str, tuple[Path, str]]:
    """Every file under static/ (its path below /ui/ → the file and an ETag of its content):
    only these are ever served, so no request path is joined onto the file system."""
    return {
        p.relative_to(STATIC).as_posix(): (p, '"' + hashlib.sha256(p.read_bytes()).hexdigest()[:32] + '"')
        for p in STATIC.rglob("*")
        if p.is_file()
    }


ASSETS = _assets()

router = APIRouter(include_in_schema=False)


def _file(asset: tuple[Path, str], request: Request) -> Response:
    path, etag = asset
    headers = {**SECURITY_HEADERS, "etag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    media_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=headers)


@router.get("/")
async def index(request: Request) -> Response:
    return _file(ASSETS["index.html"], request)


@router.get(ASSET_PREFIX + "{asset:path}")
async def asset(asset: str, request: Request) -> Response:
    found = ASSETS.get(asset)
    if found is None:
        raise NotFound(f"No dashboard file {asset!r}", code="unknown_url")
    return _file(found, request)
