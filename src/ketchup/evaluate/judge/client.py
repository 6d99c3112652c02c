"""Talking to the judge: the official `openai` client, retries with backoff, a time ceiling.

`api_key_from_env` reads the key from the variable the config names, and nothing else ever sees
it: it goes to `openai.OpenAI` and is scrubbed (`redact`) from every error text and answer before
anything is written. `send_all` sends requests through a thread pool of `concurrency` workers;
each request is retried on 429, 408/409, 5xx, timeouts and connection errors with exponential
backoff and jitter (honouring Retry-After), at most `max_retries` times. The client's own retries
are off (max_retries=0) so that this loop alone decides, and it stops at the run's deadline:
past `max_total_s` nothing more is sent and what is left is reported as not judged.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from ketchup.config import ConfigError, JudgeConfig

# Failure kinds (a request that got no answer is "not judged", with one of these reasons)
CEILING = "time ceiling reached"
RETRIES = "retries exhausted"
FATAL = "fatal endpoint error"
REJECTED = "request rejected"
STOPPED = "run stopped"

RETRYABLE_STATUS = (408, 409, 429)
OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Answer:
    text: str
    usage: dict[str, Any] | None = None


@dataclass(frozen=True)
class Failure:
    reason: str  # one of CEILING, RETRIES, FATAL, REJECTED, STOPPED
    error: str
    attempts: int


def api_key_from_env(cfg: JudgeConfig) -> str:
    """The key from `cfg.api_key_env`; a clear ConfigError naming the variable if it is unset."""
    key = os.environ.get(cfg.api_key_env, "")
    if not key.strip():
        raise ConfigError(
            f"config key 'judge.api_key_env': the environment variable {cfg.api_key_env} is not "
            f"set (it must hold the API key of the judge endpoint "
            f"{cfg.base_url or OPENAI_BASE_URL}); export {cfg.api_key_env}=..., or "
            "set judge.dry_run: true to write the prompts without calling anything"
        )
    return key


def redact(text: str | None, secret: str | None) -> str | None:
    if text is None or not secret:
        return text
    return text.replace(secret, "[REDACTED]")


def decoding(cfg: JudgeConfig) -> dict[str, Any]:
    """The decoding parameters sent with every request (and hashed into the cache key)."""
    return {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}


def make_openai_client(cfg: JudgeConfig, api_key: str):
    import openai

    # base_url None means OpenAI itself (explicitly: OPENAI_BASE_URL must not redirect requests
    # that the cache files under base_url None)
    return openai.OpenAI(
        base_url=cfg.base_url or OPENAI_BASE_URL,
        api_key=api_key,
        timeout=cfg.timeout_s,
        max_retries=0,
    )


class JudgeClient:
    """One chat completion with retries, backoff and the run's deadline; thread-safe."""

    def __init__(
        self,
        cfg: JudgeConfig,
        api_key: str,
        *,
        deadline: float | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        client: Any = None,
    ):
        self.cfg = cfg
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stop = threading.Event()
        self._secret = api_key
        self._client = client if client is not None else make_openai_client(cfg, api_key)
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        # time.monotonic() past which nothing is sent; by default max_total_s from now (after
        # the client exists, so importing openai does not eat into the budget)
        self.deadline = time.monotonic() + cfg.max_total_s if deadline is None else deadline

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None and 0 < retry_after <= 120:
            return retry_after
        with self._rng_lock:
            jitter = 0.5 + 0.5 * self._rng.random()
        return min(self.backoff_s * 2**attempt, self.max_backoff_s) * jitter

    def _describe(self, e: BaseException) -> str:
        status = getattr(e, "status_code", None)
        text = f"{type(e).__name__}" + (f" (HTTP {status})" if status else "") + f": {e}"
        return redact(text, self._secret) or ""

    def ask(self, messages: list[dict[str, str]]) -> Answer | Failure:
        import openai

        attempt, last = 0, "not sent"
        while True:
            if self.stop.is_set():
                return Failure(STOPPED, last, attempt)
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return Failure(CEILING, last, attempt)
            retry_after = None
            try:
                response = self._client.chat.completions.create(
                    model=self.cfg.model,
                    messages=messages,
                    temperature=self.cfg.temperature,
                    max_tokens=self.cfg.max_tokens,
                    timeout=min(self.cfg.timeout_s, remaining),
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                self.stop.set()  # every other request would fail the same way
                return Failure(FATAL, self._describe(e), attempt + 1)
            except openai.NotFoundError as e:  # unknown model or wrong base_url
                self.stop.set()
                return Failure(FATAL, self._describe(e), attempt + 1)
            except openai.APIStatusError as e:
                status = e.status_code
                if status < 500 and status not in RETRYABLE_STATUS:
                    return Failure(REJECTED, self._describe(e), attempt + 1)
                last = self._describe(e)
                retry_after = _retry_after(e)
            except openai.APIConnectionError as e:  # includes APITimeoutError
                last = self._describe(e)
            else:
                usage = getattr(response, "usage", None)
                if not response.choices:
                    last = "the response has no choices"
                else:
                    content = response.choices[0].message.content
                    return Answer(
                        redact(content or "", self._secret) or "",
                        usage.model_dump(exclude_none=True) if usage is not None else None,
                    )
            if attempt >= self.cfg.max_retries:
                return Failure(RETRIES, last, attempt + 1)
            delay = self._delay(attempt, retry_after)
            if time.monotonic() + delay >= self.deadline:
                return Failure(CEILING, last, attempt + 1)
            if self.stop.wait(delay):
                return Failure(STOPPED, last, attempt + 1)
            attempt += 1


def _retry_after(e: Any) -> float | None:
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    value = headers.get("retry-after-ms")
    try:
        if value is not None:
            return float(value) / 1000
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except ValueError:
        return None


def send_all(
    client: JudgeClient,
    jobs: Iterable[tuple[str, list[dict[str, str]]]],
    *,
    concurrency: int,
    on_result: Callable[[str, Answer | Failure], None],
) -> None:
    """Send (key, messages) jobs with at most `concurrency` in flight; `on_result` runs in the
    calling thread as each one finishes (so the cache is written from one thread)."""
    jobs = list(jobs)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="judge")
    try:
        pending = {pool.submit(client.ask, messages): key for key, messages in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                on_result(pending.pop(future), future.result())
    except BaseException:
        client.stop.set()  # Ctrl-C: workers give up at their next step; answers are cached
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
