"""Reading a `POST /v1/files` body without holding the file in memory.

Starlette's parser spools each file part to a temporary file on disk as it arrives; the
declared Content-Length is checked first so an oversized upload is refused before a byte
of it is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from service.api.fields import NUL_MESSAGE
from service.api.files.schemas import FILENAME_MAX_CHARS, PURPOSES, ExpiresAfter
from service.api.files.service import copy_to_path, scratch_file
from service.core.errors import InvalidRequest, PayloadTooLarge

# Room for the multipart envelope and the small form fields around the file.
MULTIPART_OVERHEAD = 64 * 1024


def multipart_openapi(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that parses its multipart body by hand (streamed to
    disk), so the generated document still shows the body's shape."""
    schema = {"type": "object", "required": required, "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


BINARY = {"type": "string", "format": "binary"}


@dataclass
class ReceivedFile:
    path: Path
    filename: str
    purpose: str
    expires_after_seconds: int | None


def _too_large(limit: int, field: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"'{field}' is too large: the limit is {limit} bytes. Use the Uploads API (/v1/uploads) for larger "
        "files, in parts of up to 64 MB, or raise the limit in Tailor's settings.",
        param=field,
    )


def _expires_after(form_fields: dict[str, str]) -> int | None:
    anchor = form_fields.get("expires_after[anchor]")
    seconds = form_fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    try:
        # Form fields are text: "3600" must read as 3600 here, unlike in a JSON body.
        return ExpiresAfter.model_validate({"anchor": anchor, "seconds": seconds}, strict=False).seconds
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        raise InvalidRequest(
            f"Invalid value for 'expires_after[{field}]': anchor must be 'created_at' and seconds between 3600 and 2592000.",
            param=f"expires_after.{field}",
        ) from None


def _stored_filename(filename: str) -> str:
    if len(filename) > FILENAME_MAX_CHARS:
        raise InvalidRequest(
            f"The file's name is {len(filename)} characters long; the limit is {FILENAME_MAX_CHARS}.", param="file"
        )
    if "\x00" in filename:
        raise InvalidRequest(f"The file's name {NUL_MESSAGE}.", param="file")
    return filename


@dataclass
class SpooledForm:
    path: Path
    filename: str
    fields: dict[str, str]


@asynccontextmanager
async def spool_form_file(request: Request, field: str, limit: int) -> AsyncIterator[SpooledForm]:
    """Parse a multipart body whose one file part is `field`; the file lands in a scratch
    file that is removed when the block ends."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise _too_large(limit, field)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest(f"Send the request as multipart/form-data with a `{field}` file field.", param=field)
    async with request.form(max_files=1, max_fields=20) as form:
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            raise InvalidRequest(f"Missing required parameter: '{field}'.", param=field)
        if upload.size is not None and upload.size > limit:
            raise _too_large(limit, field)
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        with scratch_file() as path:
            size = await asyncio.to_thread(copy_to_path, upload.file, path)
            if size > limit:
                raise _too_large(limit, field)
            yield SpooledForm(path, upload.filename or field, fields)


@asynccontextmanager
async def receive_file(request: Request, limit: int) -> AsyncIterator[ReceivedFile]:
    async with spool_form_file(request, "file", limit) as form:
        purpose = form.fields.get("purpose")
        if purpose is None:
            raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"Invalid value for 'purpose': '{purpose}'. Supported values are: {', '.join(PURPOSES)}.",
                param="purpose",
            )
        yield ReceivedFile(form.path, _stored_filename(form.filename), purpose, _expires_after(form.fields))
