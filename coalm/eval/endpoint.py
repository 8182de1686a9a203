"""The evaluators' backend for any OpenAI-compatible chat endpoint (`engine.serve`, vLLM, TGI, llama.cpp's server).

    python -m coalm.eval --bench api-bank --base-url http://127.0.0.1:8000/v1 --model-name coalm --concurrency 8

Same interface as the local backend (`coalm.eval.backends`): `chat(conversations, max_new_tokens) -> texts`, greedy
(temperature 0), texts in input order. Up to `concurrency` requests are in flight at once, which is what lets a
continuous-batching server decode them together. The benchmark prompts already carry their tools as text (each
benchmark's official prompt or the CoALM-IT format), so requests send no `tools` and the answer is the raw text,
exactly what the local backend scores.

Any failed request stops the run with one line naming the endpoint, the HTTP status and the server's message; no
silent retries, so a report never mixes answers from a flaky endpoint with blanks.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx

from coalm.eval.base import EvalError


class EndpointBackend:
    def __init__(self, base_url: str, model_name: str | None = None, api_key: str | None = None,
                 concurrency: int = 4, timeout: float = 600.0):
        if concurrency < 1:
            raise EvalError(f"--concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout,
                                   limits=httpx.Limits(max_connections=concurrency))
        self.model_name = model_name or self._first_model()
        self.name = f"{self.model_name}@{self.base_url}"

    def _request(self, method: str, path: str, **kw) -> dict:
        try:
            r = self.client.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise EvalError(f"endpoint {self.base_url}{path}: {type(e).__name__}: {e}") from None
        if r.status_code != 200:
            try:
                msg = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = r.text[:300]
            raise EvalError(f"endpoint {self.base_url}{path} answered {r.status_code}: {msg}")
        try:
            return r.json()
        except ValueError:
            raise EvalError(f"endpoint {self.base_url}{path} answered non-JSON: {r.text[:200]!r}") from None

    def _first_model(self) -> str:
        data = self._request("GET", "/models").get("data") or []
        if not data or not isinstance(data[0], dict) or "id" not in data[0]:
            raise EvalError(f"endpoint {self.base_url}/models lists no model; pass --model-name")
        return data[0]["id"]

    def _one(self, messages: list[dict], max_new_tokens: int) -> str:
        body = {"model": self.model_name, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0.0}
        out = self._request("POST", "/chat/completions", json=body)
        try:
            return out["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise EvalError(f"endpoint {self.base_url}/chat/completions answered without choices: "
                            f"{str(out)[:200]}") from None

    def chat(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        if not conversations:
            return []
        with ThreadPoolExecutor(min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(lambda c: self._one(c, max_new_tokens), conversations))  # map keeps input order

    def close(self):
        self.client.close()
