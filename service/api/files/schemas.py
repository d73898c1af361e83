"""Request and response shapes of the Files and Uploads APIs (OpenAI spec: OpenAIFile, Upload...)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.fields import RequestBody, absent_if_none
from service.api.pagination import IdPage
from service.core.tables import File, Upload, UploadPart

# What POST /v1/files accepts (the spec's CreateFileRequest.purpose), what Uploads accept,
# and whose content must be JSONL (checked line by line before the file is accepted).
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
UploadPurpose = Literal["assistants", "batch", "fine-tune", "vision"]
JSONL_PURPOSES = frozenset({"fine-tune", "batch", "evals"})
# The filename column's width.
FILENAME_MAX_CHARS = 512


class ExpiresAfter(RequestBody):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2592000)


class FileObject(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    # The spec types these as a plain integer and string: absent, never null.
    expires_at: int | None = absent_if_none()
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = absent_if_none()

    @classmethod
    def of(cls, row: File) -> FileObject:
        return cls.model_validate(row)


class FileList(IdPage[FileObject]):
    pass


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class UploadCreate(RequestBody):
    filename: str = Field(min_length=1, max_length=FILENAME_MAX_CHARS)
    purpose: UploadPurpose
    bytes: int = Field(ge=0)
    mime_type: str = Field(min_length=1, max_length=255)
    expires_after: ExpiresAfter | None = None


class UploadComplete(RequestBody):
    part_ids: list[str]
    md5: str | None = None


class UploadObject(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileObject | None = None

    @classmethod
    def of(cls, row: Upload, status: str, file: File | None = None) -> UploadObject:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            expires_at=row.expires_at,
            filename=row.filename,
            purpose=row.purpose,
            status=status,
            file=FileObject.of(file) if file is not None else None,
        )


class UploadPartObject(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str

    @classmethod
    def of(cls, row: UploadPart) -> UploadPartObject:
        return cls.model_validate(row)
