"""The OpenAI/vLLM wire format of the policy server: request models, errors and response builders.

Requests are tolerant (unknown fields are ignored, like vLLM) but parameters that cannot be honoured
are refused with a 400. Responses carry vLLM's extensions: ``prompt_token_ids`` (top level, first
stream chunk only) and per-choice ``token_ids`` (the delta tokens of each chunk when streaming).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LOGPROB_FLOOR = -9999.0  # vLLM's stand-in for -inf, which JSON cannot carry


class ServingError(Exception):
    """An error answered to the client as ``{"error": {message, type, param, code}}``."""

    def __init__(self, message: str, status: int = 400, type_: str = "BadRequestError", param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param = message, status, type_, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}


class NotFound(ServingError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, 404, "NotFoundError", param)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    n: int = 1
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None
    skip_special_tokens: bool = True
    ignore_eos: bool = False

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatRequest:
        for message in self.messages:
            if message.get("role") not in {"system", "developer", "user", "assistant", "tool"}:
                raise ValueError(f"unsupported message role {message.get('role')!r}")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.tool_choice not in (None, "auto", "none"):
            raise ValueError("only tool_choice 'auto' or 'none' is supported")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise ValueError("response_format other than 'text' is not supported")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] = Field(min_length=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if self.echo or self.suffix:
            raise ValueError("echo and suffix are not supported")
        if isinstance(self.prompt, list) and isinstance(self.prompt[0], str) and len(self.prompt) != 1:
            raise ValueError("only one prompt per request is supported")
        return self

    def token_limit(self) -> int | None:
        return self.max_tokens


class LoadLoRARequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    lora_name: str | None = None
    lora_path: str | None = None


class UnloadLoRARequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    lora_name: str | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def safe_logprob(value: float) -> float:
    return max(float(value), LOGPROB_FLOOR)


def chat_logprob_entry(token: str, logprob: float, top: list[tuple[str, float]] | None) -> dict[str, Any]:
    """One element of ``choices[].logprobs.content`` in OpenAI's chat format."""
    return {
        "token": token,
        "logprob": safe_logprob(logprob),
        "bytes": list(token.encode("utf-8")),
        "top_logprobs": [
            {"token": t, "logprob": safe_logprob(lp), "bytes": list(t.encode("utf-8"))} for t, lp in (top or [])
        ],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_card(name: str, root: str, parent: str | None, created: int, max_model_len: int | None) -> dict[str, Any]:
    """One entry of ``GET /v1/models`` (vLLM's ModelCard)."""
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "nextstate",
        "root": root,
        "parent": parent,
        "max_model_len": max_model_len,
        "permission": [],
    }


Finish = Literal["stop", "length", "abort"]
