"""The slice of OpenAI's chat-completions API that glmv serve speaks, as Pydantic models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Loose(BaseModel):
    # Clients send fields glmv has no use for (user, metadata, store...): accept and ignore them.
    model_config = ConfigDict(extra="ignore")


class ImageUrl(_Loose):
    url: str
    detail: str | None = None


class ContentPart(_Loose):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | str | None = None


class Message(_Loose):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant turn's calls (arguments as a JSON string)
    tool_call_id: str | None = None  # a tool turn: the call it answers


class JsonSchemaSpec(_Loose):
    name: str | None = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Loose):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Loose):
    include_usage: bool = False


class ChatTemplateKwargs(_Loose):
    enable_thinking: bool = False


class ChatCompletionRequest(_Loose):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None  # none | auto | required | {"type": "function", ...}
    parallel_tool_calls: bool | None = None


MIN_LOGPROB = -9999.0  # JSON has no -Infinity; OpenAI uses this floor too


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def token_logprobs(tokens: list[str], logprobs: list[float], raw: list[bytes] | None = None) -> dict[str, Any]:
    """choices[i].logprobs in OpenAI's shape; top_logprobs stay empty (the engine keeps only the chosen token).

    `raw` holds each token's exact bytes where the engine knows them (a character may span tokens).
    """
    raw = raw if raw is not None and len(raw) == len(tokens) else [tok.encode("utf-8") for tok in tokens]
    content = [
        {"token": tok, "logprob": max(lp, MIN_LOGPROB), "bytes": list(b), "top_logprobs": []}
        for tok, lp, b in zip(tokens, logprobs, raw, strict=False)
    ]
    return {"content": content, "refusal": None}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
