"""ApiError: an HTTP status plus OpenAI's error body, raised anywhere in a request and rendered by the app."""

from __future__ import annotations

from glmv_cli.serve.openai_types import error_body


class ApiError(Exception):
    """A request-level failure the client sees as {"error": {...}} with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)


def bad_request(message: str, code: str = "invalid_request", param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param=param)
