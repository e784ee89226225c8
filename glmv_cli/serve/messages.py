"""Turn an OpenAI chat request into the engine's Request: text, images (safely loaded), settings, schema."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from glmv_cli.engine.base import Backend, GenerationSettings, Request
from glmv_cli.engine.tools import functions, template_calls, tool_grammar
from glmv_cli.errors import InputError
from glmv_cli.serve.errors import bad_request
from glmv_cli.serve.openai_types import ChatCompletionRequest, ContentPart, Message

DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class InputPolicy:
    """What a request may ask the server to load."""

    max_images: int = 8
    allow_urls: bool = True  # https image URLs from public addresses (glmv's SSRF-safe fetcher)
    allow_http: bool = False  # plain http URLs too
    max_url_bytes: int = 20 * 1024 * 1024
    url_timeout_s: float = 15.0


@dataclass
class Converted:
    request: Request
    cache_parts: dict[str, Any]  # the canonical request (images by sha256), for the result cache


def to_engine_request(chat: ChatCompletionRequest, backend: Backend, policy: InputPolicy) -> Converted:
    """Validate what the engine cannot do, load every image, and build the Request; ApiError(400) on bad input.

    One user turn (after any system text) stays a prompt; a longer chat, assistant turns, tool results
    or offered tools become the chat template's messages.
    """
    _refuse_unsupported(chat)
    offered = offered_tools(chat)
    chat_like = offered is not None or any(m.role in ("assistant", "tool") for m in chat.messages)
    chat_like = chat_like or sum(m.role == "user" for m in chat.messages) > 1
    if chat_like and not getattr(backend, "supports_chat", False):
        raise bad_request(
            "tools and multi-turn chats need glmv's local engine (this server forwards to another)", param="messages"
        )
    system_parts: list[str] = []
    texts: list[str] = []
    sources: list[bytes] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(chat.messages):
        if message.role in ("system", "developer"):
            text = _text_only(message, i)
            system_parts.append(text)
            turns.append({"role": "system", "content": text})
        elif message.role == "user":
            content: list[dict[str, Any]] = []
            for part in _parts(message):
                if part.type == "text":
                    texts.append(part.text or "")
                    content.append({"type": "text", "text": part.text or ""})
                else:
                    sources.append(_image_bytes(part, policy, len(sources)))
                    content.append({"type": "image"})
            turns.append({"role": "user", "content": content})
        elif message.role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": _text_only(message, i)}
            if message.tool_calls:
                try:
                    turn["tool_calls"] = template_calls(message.tool_calls)
                except ValueError as exc:
                    raise bad_request(f"messages[{i}].tool_calls: {exc}", param=f"messages[{i}].tool_calls") from None
            texts.append(turn["content"])
            turns.append(turn)
        else:
            text = _text_only(message, i)
            texts.append(text)
            turns.append({"role": "tool", "content": text})
    prompt = "\n\n".join(t for t in texts if t)
    if not prompt and not sources:
        raise bad_request("the user message has neither text nor images", param="messages")
    cap = backend.max_image_pixels()
    images = [_decode(data, n, cap) for n, data in enumerate(sources)]
    settings = GenerationSettings(
        max_new_tokens=chat.max_completion_tokens or chat.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=chat.temperature or 0.0,
        top_p=chat.top_p,
        seed=chat.seed,
        think=bool(chat.chat_template_kwargs and chat.chat_template_kwargs.enable_thinking),
        logprobs=bool(chat.logprobs),
    )
    schema = _json_schema(chat)
    grammar = _tool_grammar(chat, offered, schema)
    system = "\n\n".join(system_parts) or None
    request = Request(images=images, prompt=prompt, system=system, json_schema=schema, settings=settings)
    if chat_like:
        tools = chat.tools if offered is not None else None
        request = request.model_copy(update={"messages": turns, "tools": tools, "grammar": grammar})
        if grammar is not None:
            request = request.model_copy(update={"json_schema": None})
    parts = {
        "system": system,
        "prompt": prompt,
        "images": [hashlib.sha256(data).hexdigest() for data in sources],
        "image_cap": cap,
        "json_schema": schema,
        "settings": settings.model_dump(),
    }
    if chat_like:
        parts.update(messages=turns, tools=request.tools, grammar=grammar)
    return Converted(request, parts)


def offered_tools(chat: ChatCompletionRequest) -> dict[str, dict[str, Any]] | None:
    """name -> parameters of the tools the model may call, or None when none are (no tools, or tool_choice none)."""
    choice = chat.tool_choice
    if not chat.tools:
        if choice not in (None, "none", "auto"):
            raise bad_request("tool_choice needs tools", param="tool_choice")
        return None
    if choice == "none":
        return None
    try:
        return functions(chat.tools)
    except ValueError as exc:
        raise bad_request(str(exc), param="tools") from None


def _tool_grammar(chat: ChatCompletionRequest, offered: dict[str, Any] | None, schema: dict | None) -> str | None:
    """The constraint for an answer with tools: a forced call (required, or one named function), or under
    `auto` plain text (JSON of the response format, when one is set) or well-formed calls."""
    if offered is None:
        return None
    choice = chat.tool_choice or "auto"
    parallel = chat.parallel_tool_calls is not False
    if choice == "auto":
        grammar = tool_grammar(offered, list(offered), parallel=parallel, text=True, text_schema=schema)
    elif choice == "required":
        grammar = tool_grammar(offered, list(offered), parallel=parallel, text=False, text_schema=None)
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in offered:
            raise bad_request(f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
        grammar = tool_grammar(offered, [name], parallel=False, text=False, text_schema=None)
    else:
        raise bad_request(
            'tool_choice: "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    from glmv_cli.extraction.schema_check import lark_problem

    problem = lark_problem(grammar)
    if problem:
        raise bad_request(f"the tools' parameters cannot be compiled to a grammar: {problem}", param="tools")
    return grammar


def _refuse_unsupported(chat: ChatCompletionRequest) -> None:
    if chat.n not in (None, 1):
        raise bad_request("n > 1 is not supported", param="n")
    if chat.stop:
        raise bad_request("stop sequences are not supported", param="stop")
    if chat.top_logprobs:
        raise bad_request("top_logprobs is not supported (logprobs gives the chosen tokens')", param="top_logprobs")


def _parts(message: Message) -> list[ContentPart]:
    if message.content is None:
        return []
    if isinstance(message.content, str):
        return [ContentPart(type="text", text=message.content)]
    return message.content


def _text_only(message: Message, index: int) -> str:
    parts = _parts(message)
    if any(p.type != "text" for p in parts):
        raise bad_request(f"messages[{index}]: a {message.role} message takes text only", param=f"messages[{index}]")
    return "\n\n".join(p.text or "" for p in parts)


def _image_bytes(part: ContentPart, policy: InputPolicy, count: int) -> bytes:
    if count >= policy.max_images:
        raise bad_request(f"more than {policy.max_images} images in one request", "too_many_images")
    url = part.image_url if isinstance(part.image_url, str) else (part.image_url.url if part.image_url else "")
    if url.startswith("data:"):
        return _data_url(url)
    if url.lower().startswith(("http://", "https://")):
        if not policy.allow_urls:
            raise bad_request("image URLs are turned off on this server: send a base64 data URL", "url_refused")
        from glmv_cli.inputs.urls import fetch_url

        try:
            body, _ = fetch_url(
                url, allow_http=policy.allow_http, max_bytes=policy.max_url_bytes, timeout_s=policy.url_timeout_s
            )
        except InputError as exc:
            raise bad_request(f"image URL refused: {exc.one_line()}", code=exc.code) from None
        return body
    raise bad_request("image_url must be a data: URL (base64) or an http(s) URL", "invalid_image_url")


def _data_url(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise bad_request("a data URL image must be base64: data:image/png;base64,...", "invalid_image_url")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data URL's base64 is invalid", "invalid_image_url") from None


def _decode(data: bytes, index: int, cap: int | None) -> Any:
    """Through glmv's own loader (type by content, pixel caps before decoding), then fitted for the processor."""
    from glmv_cli.inputs import fit_for_vision, load_document

    try:
        doc = load_document(data, name=f"image {index + 1}", pages=[1], max_pages=1)
    except InputError as exc:
        raise bad_request(f"image {index + 1}: {exc.one_line()}", code=exc.code) from None
    return fit_for_vision(doc.pages[0].image, max_pixels=cap)


def _json_schema(chat: ChatCompletionRequest) -> dict[str, Any] | None:
    fmt = chat.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None:
        raise bad_request("response_format json_schema needs a json_schema object", param="response_format")
    schema = fmt.json_schema.schema_
    from glmv_cli.extraction.schema_check import grammar_problem

    problem = grammar_problem(schema)
    if problem:
        raise bad_request(f"the JSON schema cannot be compiled to a grammar: {problem}", param="response_format")
    return schema
