"""The errors a service raises, each with its HTTP status and its OpenAI `type` and `code`.

The API layer turns them into `{"error": {"message", "type", "param", "code"}}`
(service/api/errors.py); here they are plain exceptions, so the job domain and the worker
raise the same ones without knowing about HTTP frameworks.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = None
    # Seconds a client should wait before trying again (sent as `retry-after`), where that helps.
    retry_after: int | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def envelope(self) -> dict[str, Any]:
        return envelope(self.message, self.type, self.param, self.code)


class InvalidRequest(ApiError):
    pass


class Unauthorized(ApiError):
    status_code = 401
    code = "invalid_api_key"


class PermissionDenied(ApiError):
    status_code = 403
    code = "insufficient_permissions"


class NotFound(ApiError):
    status_code = 404


class ModelNotFound(NotFound):
    code = "model_not_found"

    @classmethod
    def named(cls, name: str) -> ModelNotFound:
        """The one answer for a model that is missing or belongs to another project."""
        return cls(f"The model '{name}' does not exist or you do not have access to it.", param="model")


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "file_too_large"


class ServiceUnavailable(ApiError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


class BackendUnavailable(ServiceUnavailable):
    """The database, the object store or the queue failed to answer: a retry soon may work."""

    retry_after = 2


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
