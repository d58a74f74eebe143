"""Request bodies of the OpenAI API subset we serve, and OpenAI-style error bodies.

Types are strict (no "5" for 5, no true for 1) so a client's mistake is reported, not guessed at.
Fields whose shape is a union (prompt, stop, message content) are checked by hand in routes.py to
give one clear message instead of one per union branch. Unknown fields are ignored, as OpenAI
clients send extras; fields we know but do not implement are refused with a 400 so nobody gets
silently different behaviour (see `unsupported`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr

from saguaro.sampling.params import MAX_LOGPROBS

Number = Annotated[float, Strict()]  # strict float still takes ints, but not bools or strings
MAX_N = 16


class APIError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class _Sampling(BaseModel):
    """What completions and chat share."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr | None = None
    max_tokens: StrictInt | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: StrictInt | None = None  # an extension, as in vLLM
    stop: Any = None  # a string or a list of strings (checked by SamplingParams)
    seed: StrictInt | None = None
    n: StrictInt | None = Field(1, ge=1, le=MAX_N)  # null means the default, as for OpenAI
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = False  # an extension, as in vLLM
    user: StrictStr | None = None
    # Known but not implemented: accepted only at their neutral value.
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    logit_bias: Any = None

    def unsupported(self) -> list[str]:
        """Fields set to something we do not implement."""
        bad = []
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                bad.append(name)
        if self.logit_bias:
            bad.append("logit_bias")
        return bad


class CompletionRequest(_Sampling):
    prompt: Any  # a string, a list of token ids, or a list of either (checked in routes.py)
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)  # alternatives per token
    echo: StrictBool = False
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None

    def logprob_count(self) -> int | None:
        """SamplingParams.logprobs: None, or how many alternatives to report per token."""
        return self.logprobs

    def unsupported(self) -> list[str]:
        bad = super().unsupported()
        if self.echo:
            bad.append("echo")
        if self.suffix:
            bad.append("suffix")
        if self.best_of not in (None, 1, self.n or 1):
            bad.append("best_of")
        return bad


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: StrictStr
    content: Any = None  # a string, or a list of {"type": "text", "text": ...} parts
    name: StrictStr | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None  # OpenAI's newer name for max_tokens
    logprobs: StrictBool | None = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: Any = None
    tool_choice: Any = None
    response_format: Any = None

    def logprob_count(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def unsupported(self) -> list[str]:
        bad = super().unsupported()
        if self.tools:
            bad.append("tools")
        if self.tool_choice not in (None, "none"):
            bad.append("tool_choice")
        if self.response_format not in (None, {"type": "text"}):
            bad.append("response_format")
        return bad
