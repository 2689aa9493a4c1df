"""Requests to an S3-compatible object store that survive what a flaky store or network does.

Every request has a connect and a read timeout (a stalled server cannot hang a command), and a request
that fails for a passing reason (a reset or refused connection, a timeout, a body cut short, a 5xx, a
SlowDown) is tried again after an exponentially growing pause with jitter, honouring the server's
Retry-After, for as long as `object_store.retry_seconds` allows. botocore's own retries are off: they stop
after three attempts (a fraction of a second for refused connections), whatever the outage.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

from circuitdb.config import ObjectStoreConfig
from circuitdb.errors import CircuitDBError

T = TypeVar("T")

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "ConditionalRequestConflict",
}
_FIRST_PAUSE, _LONGEST_PAUSE = 0.1, 10.0


class DamagedTransfer(Exception):
    """Bytes that arrived whole by their length but do not hash to the object's name (damaged in flight)."""


class RequestFailed(CircuitDBError):
    """A request that failed for good: not a passing fault, or one that outlasted the retry budget."""

    def __init__(self, message: str, cause: Exception) -> None:
        super().__init__(message)
        self.cause = cause


def client(settings: ObjectStoreConfig):
    """A boto3 S3 client with timeouts and no retries of its own (the environment names endpoint and keys)."""
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(
        max_pool_connections=2 * settings.threads,
        connect_timeout=settings.request_timeout,
        read_timeout=settings.request_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    return boto3.client("s3", region_name=region, config=config)


def error_code(exc: Exception) -> str:
    """The S3 error code of a failed request ('' for a failure below HTTP)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_transient(exc: Exception) -> bool:
    """Whether trying the same request again may succeed."""
    from botocore.exceptions import ConnectionError, HTTPClientError, IncompleteReadError
    from s3transfer.exceptions import RetriesExceededError

    if isinstance(exc, DamagedTransfer | ConnectionError | HTTPClientError | IncompleteReadError):
        return True
    if isinstance(exc, RetriesExceededError):
        return True
    status = _status(exc)
    return status >= 500 or status == 429 or error_code(exc) in _TRANSIENT_CODES


def _retry_after(exc: Exception) -> float:
    headers = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPHeaders", {})
    try:
        return float(headers.get("retry-after", 0))
    except ValueError:
        return 0.0  # an HTTP date: our own backoff decides


def describe(exc: Exception) -> str:
    """A few words on why a request failed."""
    from botocore import exceptions as failures

    if code := error_code(exc):
        status = _status(exc)
        return f"HTTP {status} {code}" if status else code
    for kind, words in (
        (failures.EndpointConnectionError, "connection refused"),
        (failures.ConnectTimeoutError, "no connection within the timeout"),
        (failures.ReadTimeoutError, "no answer within the timeout"),
        (failures.ConnectionClosedError, "connection closed before an answer"),
        (failures.ResponseStreamingError, "answer cut short"),
        (failures.IncompleteReadError, "answer cut short"),
        (failures.ConnectionError, "connection failed"),
    ):
        if isinstance(exc, kind):
            return words
    return str(exc) or type(exc).__name__


class Requests:
    """Runs requests under the retry policy of one project's `object_store` settings."""

    def __init__(self, uri: str, settings: ObjectStoreConfig) -> None:
        self.uri = uri
        self.settings = settings

    def call(self, what: str, request: Callable[[], T]) -> T:
        """`request()`, tried again on passing faults until `retry_seconds` have gone by; `what` names it in
        the error."""
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return request()
            except CircuitDBError:
                raise  # ours already says what happened (a full disk)
            except Exception as exc:
                elapsed = time.monotonic() - start
                pause = self._pause(exc, attempt)
                if pause is None or elapsed + pause > self.settings.retry_seconds:
                    tries = f" after {attempt + 1} attempts over {elapsed:.1f} s" if attempt else ""
                    message = f"object store {self.uri}: {what} failed{tries}: {describe(exc)}"
                    raise RequestFailed(message, exc) from None
                time.sleep(pause)
                attempt += 1

    @staticmethod
    def _pause(exc: Exception, attempt: int) -> float | None:
        """Seconds to wait before the next attempt (None: do not try again). Equal jitter: half the
        exponential step fixed, half random, so many clients do not retry in lockstep."""
        if not is_transient(exc):
            return None
        step = min(_LONGEST_PAUSE, _FIRST_PAUSE * 2**attempt)
        return max(step / 2 + random.uniform(0, step / 2), _retry_after(exc))
