"""The backend interface: a batch of requests in, one generation per request out.

A local transformers backend implements it today; an OpenAI-compatible HTTP backend (vLLM,
SGLang) can implement the same contract, so extraction never knows which one runs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Compact JSON: no free whitespace, so a weak model cannot loop on spaces. Shared by the engine's
# grammar and the torch-free schema check, so the check compiles exactly what generation will.
JSON_GRAMMAR_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


class GenerationSettings(BaseModel):
    """Decoding settings; everything here changes the answer, so it is part of cache keys."""

    model_config = ConfigDict(frozen=True)

    max_new_tokens: int = 1024
    temperature: float = 0.0  # 0 = greedy, what extraction wants
    top_p: float | None = None
    seed: int | None = None
    think: bool = False
    think_budget: int | None = None  # max thinking tokens when think is on
    logprobs: bool = False  # per-token log-probabilities of the chosen tokens, before the grammar mask


class Request(BaseModel):
    """One prompt over zero or more page images, optionally constrained to a JSON Schema."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    images: list[Any] = Field(default_factory=list)  # PIL images, in order
    # Per image, its file's own bytes where the image is exactly their decoding (Page.encoded), for a backend
    # that sends files (accepts_encoded_images); None, or a None entry: encode the pixels.
    encoded: list[bytes | None] | None = None
    prompt: str
    system: str | None = None
    json_schema: dict[str, Any] | None = None
    # A whole chat instead of system + prompt: the chat template's messages, {"type": "image"} where each
    # of `images` goes in turn (past turns, tool calls and results); `prompt` then only sizes the request.
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools, offered through the chat template
    grammar: str | None = None  # a Lark grammar (llguidance) the answer must match, instead of json_schema
    assistant_prefix: str = ""  # text the answer continues from (e.g. finished thinking)
    settings: GenerationSettings = Field(default_factory=GenerationSettings)
    tag: Any = None  # caller's handle, returned untouched
    prepared: Any = None  # the backend's own pre-processed inputs (see Backend.prepare), if any


class Generation(BaseModel):
    """The answer to one request, with token counts and timings (seconds)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str = ""  # the answer, thinking and box markers stripped
    thinking: str | None = None
    finish_reason: Literal["stop", "length", "error"] = "stop"
    error: str | None = None
    error_code: str | None = None  # the record's error code when the backend knows better (errors.ERROR_CODES)
    closed_early: bool = False  # the token budget ran low and the JSON was steered to its end
    prompt_tokens: int = 0
    output_tokens: int = 0
    preprocess_s: float = 0.0
    ttft_s: float | None = None  # from batch start (preprocessing included) to the first token
    decode_s: float = 0.0  # from the first token to the last
    generate_s: float = 0.0  # preprocessing + generate for the batch this request was in
    batch_size: int = 1
    token_logprobs: list[float] | None = None
    tokens: list[str] | None = None  # decoded tokens, aligned with token_logprobs
    token_bytes: list[bytes] | None = None  # each token's exact bytes (a character may span tokens)
    token_ids: list[int] | None = None  # the model's ids of those tokens (None from servers that omit them)
    tag: Any = None

    @property
    def tokens_per_s(self) -> float | None:
        if self.output_tokens > 1 and self.decode_s > 0:
            return (self.output_tokens - 1) / self.decode_s
        return None


class Backend(abc.ABC):
    """A model that answers batches of requests."""

    model_id: str
    load_s: float = 0.0
    supports_chat: bool = False  # Request.messages, tools and Lark grammars (the local engine)
    accepts_encoded_images: bool = False  # sends Request.encoded as they are (a remote server decodes them)
    # A server batches requests as they arrive: each document goes out as soon as it is read, not once a
    # batch of them is (the local engine gathers a batch first; Extractor._run says why).
    takes_requests_as_ready: bool = False

    @abc.abstractmethod
    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Answer every request; a failure of one request is reported in its Generation."""

    @abc.abstractmethod
    def stream(self, request: Request, on_text: Callable[[str], None]) -> Generation:
        """Answer one request, calling on_text with each new piece of answer text."""

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything about the model that changes answers, known without loading it (for cache keys)."""

    def prepare(self, request: Request) -> Request:
        """Do the per-request input work now (called from loader threads); batching then only stacks."""
        return request

    def default_batch_size(self) -> int:
        return 1

    def estimate_tokens(self, request: Request) -> int:
        """Tokens the request takes in the KV cache: prompt, every page's visual tokens, the answer budget."""
        visual = sum(-(-(i.width * i.height) // (28 * 28)) for i in request.images)  # one per 28x28 px
        return len(request.prompt) // 3 + visual + request.settings.max_new_tokens

    def held_bytes(self, request: Request) -> int:
        """Bytes of the backend's own prepared inputs the request holds (0 when nothing is prepared)."""
        return 0

    def token_budget(self) -> int | None:
        """Most KV-cache tokens one batch may take (rows x its longest row); None: no limit."""
        return None

    def max_image_pixels(self) -> int | None:
        """The most pixels per image the model's processor keeps (it downscales above); None if unknown."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
