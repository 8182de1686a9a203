"""The evaluators' backend for any OpenAI-compatible chat endpoint (`engine.serve`, vLLM, TGI, llama.cpp's server).

    python -m coalm.eval --bench api-bank --base-url http://127.0.0.1:8000/v1 --model-name coalm --concurrency 8

Same interface as the local backend (`coalm.eval.backends`): `chat(conversations, max_new_tokens) -> texts`, greedy
(temperature 0), texts in input order. Up to `concurrency` requests are in flight at once, which is what lets a
continuous-batching server decode them together. The benchmark prompts already carry their tools as text (each
benchmark's official prompt or the CoALM-IT format), so requests send no `tools` and the answer is the raw text,
exactly what the local backend scores. With `--constrained on` each item that has a constrained form
(`Task.constraint`) goes out with an OpenAI `response_format` json_schema: a call list in the LA format as the schema
of that list (names from the item's tools, their arguments' schemas), a DST answer as its object schema (the fixed
"System: " before it is put in front of the returned JSON here, since a schema cannot ask for it).

Failures, by what they say about the run:
- 429, 5xx, a dropped connection or a timeout (`timeout` seconds) are retried `retries` times, waiting `backoff`
  seconds and doubling (or the server's Retry-After, up to 60 s); still failing, they are that item's `ItemError`;
- any other 4xx (a prompt past the context length), a body that is not a chat completion, a content that is not
  a string, or one longer than `max_chars` characters is that item's `ItemError` at once;
- 401, 403 and 404 (wrong key, unknown model or path) would fail every item the same way: one EvalError ends the run.
The runner records item errors in the report and goes on; a rerun sends only the items not yet answered.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from coalm.eval.base import EvalError, ItemError, clip
from coalm.eval.options import RunOptions

FATAL = (401, 403, 404)
MAX_RETRY_AFTER = 60.0
_DEFAULTS = RunOptions()


class _Retry(Exception):
    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return min(max(float(r.headers.get("retry-after", "")), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return None


def model_ids(listing) -> list[str]:
    """Model names from a `/models` answer of any shape: OpenAI's {"data": [{"id"}]}, a bare list, {"models": [...]},
    entries as objects with "id" (or "name", "model") or as plain strings."""
    if isinstance(listing, dict):
        listing = next((listing[k] for k in ("data", "models") if isinstance(listing.get(k), list)), [])
    if not isinstance(listing, list):
        return []
    ids = []
    for entry in listing:
        if isinstance(entry, dict):
            entry = next((entry[k] for k in ("id", "name", "model") if isinstance(entry.get(k), str)), None)
        if isinstance(entry, str) and entry:
            ids.append(entry)
    return ids


class EndpointBackend:
    def __init__(self, base_url: str, model_name: str | None = None, api_key: str | None = None,
                 concurrency: int = _DEFAULTS.concurrency, timeout: float = _DEFAULTS.timeout,
                 retries: int = _DEFAULTS.retries, backoff: float = _DEFAULTS.retry_backoff,
                 max_chars: int = _DEFAULTS.max_response_chars):
        if concurrency < 1:
            raise EvalError(f"--concurrency must be >= 1, got {concurrency}")
        if not timeout or timeout <= 0:
            raise EvalError(f"--timeout must be positive, got {timeout}")
        self.base_url = base_url.rstrip("/")
        self.concurrency, self.retries, self.backoff, self.max_chars = concurrency, retries, backoff, max_chars
        key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                   limits=httpx.Limits(max_connections=concurrency))
        self.model_name = model_name or self._first_model()
        self.name = f"{self.model_name}@{self.base_url}"

    def _once(self, method: str, path: str, **kw):
        """One request -> its JSON. Raises _Retry (worth another try), ItemError or EvalError (fatal)."""
        where = f"endpoint {self.base_url}{path}"
        try:
            r = self.client.request(method, path, **kw)
        except httpx.HTTPError as e:  # connection refused or dropped, timeouts, a malformed answer
            raise _Retry(f"{where}: {type(e).__name__}: {clip(str(e) or 'no detail', 200)}") from None
        if r.status_code != 200:
            try:
                msg = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = r.text
            text = f"{where} answered {r.status_code}: {clip(str(msg), 300)}"
            if r.status_code == 429 or r.status_code >= 500:
                raise _Retry(text, _retry_after(r))
            if r.status_code in FATAL:
                raise EvalError(text)
            raise ItemError(text)
        try:
            return r.json()
        except ValueError:
            raise ItemError(f"{where} answered non-JSON: {clip(repr(r.text), 200)}") from None

    def _request(self, method: str, path: str, **kw):
        for attempt in range(self.retries + 1):
            try:
                return self._once(method, path, **kw)
            except _Retry as e:
                if attempt == self.retries:
                    raise ItemError(f"{e} (after {self.retries} retries)") from None
                time.sleep(e.wait if e.wait is not None else self.backoff * 2 ** attempt)
        raise AssertionError("unreachable")

    def _first_model(self) -> str:
        try:
            ids = model_ids(self._request("GET", "/models"))
        except ItemError as e:
            raise EvalError(f"{e}; pass --model-name") from None
        if not ids:
            raise EvalError(f"endpoint {self.base_url}/models lists no model; pass --model-name")
        return ids[0]

    def _one(self, messages: list[dict], max_new_tokens: int, constraint: dict | None = None):
        """The assistant text, or an ItemError for this conversation. `constraint` (`Task.constraint`) goes out as an
        OpenAI `response_format` json_schema (the one structured-output field every such server takes)."""
        body = {"model": self.model_name, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0.0}
        prefix = ""
        if constraint is not None:
            try:
                body["response_format"], prefix = response_format(constraint)
            except ValueError as e:  # GrammarError: this item goes out unconstrained, the others keep theirs
                logging.getLogger("coalm.eval").warning("constrained decoding off for one item: %s", e)
        try:
            out = self._request("POST", "/chat/completions", json=body)
        except ItemError as e:
            return e
        where = f"endpoint {self.base_url}/chat/completions"
        try:
            content = out["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            return ItemError(f"{where} answered without choices: {clip(str(out), 200)}")
        if content is None:  # a message with no text (e.g. tool calls only): the model said nothing
            return ""
        if not isinstance(content, str):
            return ItemError(f"{where} answered a {type(content).__name__} as the message content, not text")
        if len(content) > self.max_chars:
            return ItemError(f"{where} answered {len(content)} characters (more than --max-response-chars "
                             f"{self.max_chars})")
        # a fixed text the local grammar forces before the JSON ("System: " of a DST answer) cannot be asked of an
        # endpoint: the JSON is constrained there and the text put in front here
        return content if content.startswith(prefix) else prefix + content

    def chat(self, conversations: list[list[dict]], max_new_tokens: int, constraints=None) -> list:
        if not conversations:
            return []
        constraints = constraints or [None] * len(conversations)
        with ThreadPoolExecutor(min(self.concurrency, len(conversations))) as pool:  # map keeps input order
            return list(pool.map(lambda c, k: self._one(c, max_new_tokens, k), conversations, constraints))


def response_format(constraint: dict) -> tuple[dict, str]:
    """(OpenAI `response_format`, fixed prefix) for a `Task.constraint`: a call list in the LA format as the JSON schema
    of that list (`engine.structured.la_calls_schema`), a JSON answer as its own schema."""
    from engine.structured import GrammarError, la_calls_schema

    if "json_schema" in constraint:
        schema, name = constraint["json_schema"], "answer"
    elif constraint.get("fmt", "la") == "la":
        schema, name = la_calls_schema(constraint["tools"], constraint.get("tool_choice", "auto")), "calls"
    else:
        raise GrammarError(f"a {constraint.get('fmt')!r} call list is not one JSON value: no response_format for it")
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}, \
        constraint.get("prefix", "")

    def close(self):
        self.client.close()
