"""OpenAI-compatible chat endpoint as a judge back end (``vllm serve``, or any such server), stdlib only."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from longact_pl.rewards.judge.types import JudgeError, Messages


def reply_text(body: bytes) -> str:
    """The first choice's message text of a ``/v1/chat/completions`` response body.

    Raises:
        JudgeError: If the body is not JSON of that shape (a proxy's HTML page, a truncated reply...).
    """
    try:
        data = json.loads(body.decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
        raise JudgeError(
            f"malformed chat-completion response ({type(err).__name__}): {body[:120]!r}"
        ) from None
    if not isinstance(content, str):
        raise JudgeError(f"chat-completion content is not text: {content!r}"[:200])
    return content


class OpenAIHttpBackend:
    """POSTs each request to ``{base_url}/chat/completions``, ``concurrency`` at a time.

    Args:
        base_url: The server's OpenAI API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: Model name the server serves (``vllm serve <path>`` serves it under ``<path>``).
        max_tokens: Reply budget (room for the explanation and the ``[[YES]]``/``[[NO]]``).
        temperature: Sampling temperature (0: greedy, QwenLong-L1's setting).
        timeout_s: Seconds a request may take (connect and read) before it fails.
        concurrency: Requests in flight at once.
        api_key_env: Environment variable holding a bearer token (``None``/unset: no ``Authorization``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        max_tokens: int = 256,
        temperature: float = 0.0,
        timeout_s: float = 60.0,
        concurrency: int = 16,
        api_key_env: str | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge.backend.base_url must start with http:// or https://, got {base_url!r}")
        if timeout_s <= 0 or concurrency < 1 or max_tokens < 1:
            raise ValueError("judge.backend: timeout_s must be > 0, concurrency and max_tokens >= 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.timeout_s, self.concurrency = timeout_s, concurrency
        self.api_key_env = api_key_env

    def _post(self, messages: Messages) -> str:
        payload = {"model": self.model, "messages": messages, "temperature": self.temperature,
                   "max_tokens": self.max_tokens}  # fmt: skip
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, json.dumps(payload).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - http(s) only
                return reply_text(response.read())
        except urllib.error.HTTPError as err:
            raise JudgeError(f"HTTP {err.code} from {self.url}: {err.read()[:120]!r}") from None
        except urllib.error.URLError as err:
            raise JudgeError(f"cannot reach {self.url}: {err.reason}") from None
        except TimeoutError:
            raise JudgeError(f"no reply from {self.url} within {self.timeout_s} s") from None

    def _one(self, messages: Messages) -> str | BaseException:
        try:
            return self._post(messages)
        except Exception as err:  # noqa: BLE001 - returned in the request's slot, retried by the judge
            return err

    def complete(self, requests: list[Messages]) -> list[str | BaseException]:
        """One reply (or the exception it failed with) per request, sent concurrently."""
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))
