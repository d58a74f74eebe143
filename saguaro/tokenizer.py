"""Text <-> token ids for the engine: a `tokenizers.Tokenizer` plus its config and chat template.

Also `StreamDecoder`, which turns generated ids into text pieces that are safe to stream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _Backend

from saguaro.errors import InvalidRequestError, ModelLoadError

log = logging.getLogger(__name__)

# ChatML ends an assistant turn with <|im_end|> and a document with <|endoftext|>; a chat model may
# emit either to stop (Qwen2.5-Instruct's generation_config lists both).
_CHATML_STOPS = ("<|im_end|>", "<|endoftext|>")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _eos_ids_in(path: Path) -> list[int]:
    """The `eos_token_id` (an int or a list of them) of a generation_config.json / config.json."""
    if not path.is_file():
        return []
    value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    if isinstance(value, int):
        return [value]
    return [v for v in value if isinstance(v, int)] if isinstance(value, list) else []


def _template_text(config: dict) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters, which would change what the model sees.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in the environment transformers renders them in."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _checked_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {'role': str, 'content': str} dicts")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"message {i} is a {type(message).__name__}, not a dict")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise InvalidRequestError(f"message {i} needs a string {key!r}")
        # A copy without None values (as transformers normalizes them), so the template cannot
        # touch the caller's objects.
        checked.append({k: v for k, v in message.items() if v is not None})
    return checked


def check_text(text: str, what: str = "the prompt") -> str:
    """`text` if it can be encoded as UTF-8, else InvalidRequestError naming the first bad character.

    Python holds undecodable input bytes (command-line arguments, stdin) as lone surrogates; those
    are refused rather than replaced, so a prompt never silently differs from what was typed.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        what_char = (f"the byte 0x{code - 0xDC00:02x}, which is not valid UTF-8," if 0xDC80 <= code <= 0xDCFF
                     else f"a lone surrogate U+{code:04X}")
        raise InvalidRequestError(f"{what} holds {what_char} at character {e.start}; "
                                  "give text as UTF-8 (check the terminal's or file's encoding)") from None


class Tokenizer:
    """A loaded tokenizer: encode/decode, chat template, stop ids."""

    def __init__(self, backend: _Backend, config: dict, extra_eos_ids: Iterable[int] = ()):
        self._backend = backend
        self.config = dict(config)
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.pad_token = _token_text(config.get("pad_token"))
        self.unk_token = _token_text(config.get("unk_token"))
        self.bos_token_id = self._id_of(self.bos_token)
        self.eos_token_id = self._id_of(self.eos_token)
        self.pad_token_id = self._id_of(self.pad_token)
        if "add_bos_token" in config:
            self.add_bos_token = bool(config["add_bos_token"])
        else:
            # No explicit flag: the tokenizer.json post-processor says whether a bos is wanted.
            added = backend.encode("", add_special_tokens=True).ids
            self.add_bos_token = self.bos_token_id is not None and self.bos_token_id in added
        self._specials = {i: t.content for i, t in backend.get_added_tokens_decoder().items() if t.special}
        self.eos_token_ids = self._stop_ids(extra_eos_ids)
        self.chat_template = _template_text(config)
        try:
            self._template = compile_chat_template(self.chat_template) if self.chat_template else None
        except jinja2.TemplateSyntaxError as e:
            raise ModelLoadError(f"the tokenizer's chat template does not compile: {e}") from e

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_files(cls, tokenizer_json: str, tokenizer_config: dict,
                   extra_eos_ids: Iterable[int] = ()) -> Tokenizer:
        """From a tokenizer.json text and a tokenizer_config.json dict (e.g. built from a GGUF)."""
        try:
            backend = _Backend.from_str(tokenizer_json)
        except Exception as e:  # the tokenizers library raises a bare Exception on bad JSON
            raise ModelLoadError(f"tokenizer.json is unusable: {e}") from e
        return cls(backend, tokenizer_config, extra_eos_ids)

    @classmethod
    def from_folder(cls, path: str | Path) -> Tokenizer:
        """From a Hugging Face model folder (tokenizer.json, tokenizer_config.json, eos ids)."""
        folder = Path(path)
        tokenizer_json = folder / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise ModelLoadError(f"{folder} has no tokenizer.json")
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        template_path = folder / "chat_template.jinja"
        if "chat_template" not in config and template_path.is_file():
            config["chat_template"] = template_path.read_text(encoding="utf-8")
        extra = _eos_ids_in(folder / "generation_config.json") + _eos_ids_in(folder / "config.json")
        return cls.from_files(tokenizer_json.read_text(encoding="utf-8"), config, extra)

    def save(self, folder: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json; eos ids given as extra_eos_ids are not kept."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokenizer.json").write_text(self._backend.to_str(), encoding="utf-8")
        (out / "tokenizer_config.json").write_text(
            json.dumps(self.config, ensure_ascii=False, indent=2), encoding="utf-8")

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    def _stop_ids(self, extra: Iterable[int]) -> frozenset[int]:
        ids = set(extra)
        if self.eos_token_id is not None:
            ids.add(self.eos_token_id)
        ids.update(i for i, content in self._specials.items() if content in _CHATML_STOPS)
        return frozenset(ids)

    # ---- ids ----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def fingerprint(self) -> tuple[int, list[str | None]]:
        """(size, every 97th token): cheap to send and compare, enough to tell tokenizers apart."""
        return self.vocab_size, [self.id_to_token(i) for i in range(0, self.vocab_size, 97)]

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special (control) tokens."""
        return frozenset(self._specials)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in the text are matched as such.

        `add_special_tokens` adds the bos when the tokenizer wants one, and nothing else: a prompt
        never gets an eos appended, whatever the post-processor says.
        """
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat ---------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for a conversation, rendered as transformers renders it."""
        if self._template is None:
            raise InvalidRequestError("this model has no chat template; send a plain prompt instead")
        variables = {name: value for name, value in (
            ("bos_token", self.bos_token), ("eos_token", self.eos_token),
            ("pad_token", self.pad_token), ("unk_token", self.unk_token)) if value is not None}
        try:
            return self._template.render(messages=_checked_messages(messages), tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.TemplateError as e:  # raise_exception() in the template: the request broke a rule
            raise InvalidRequestError(f"chat template rejected the messages: {e}") from e


class StreamDecoder:
    """Incremental detokenization: push ids one by one, get the text that is now final.

    A token can end inside a multi-byte character, which decodes to U+FFFD until the next token
    completes it, so such text is held back. Each push re-decodes from a prefix offset a little
    before the new tokens, because some decoders (leading-space rules) depend on the neighbours.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the window re-decoded for context
        self._read_offset = 0  # ids before this have been returned as text

    def _window_texts(self) -> tuple[str, str]:
        decode = self._tokenizer.decode
        done = decode(self._ids[self._prefix_offset:self._read_offset])
        return done, decode(self._ids[self._prefix_offset:])

    def push(self, token_id: int) -> str:
        """The newly stable text after `token_id` (possibly empty); special tokens add nothing."""
        self._ids.append(token_id)
        done, full = self._window_texts()
        if len(full) <= len(done) or full.endswith("\ufffd"):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return full[len(done):]

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character comes out as U+FFFD)."""
        done, full = self._window_texts()
        self._prefix_offset = self._read_offset = len(self._ids)
        return full[len(done):]
