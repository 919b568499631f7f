"""The public exceptions. Each subclasses the built-in a caller would catch anyway."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class GuardrailsError(Exception):
    """Base of every error guardrails raises."""


class PolicyConfigError(GuardrailsError, ValueError):
    """The configuration is invalid; ``problems`` lists ``(dotted_path, message)`` pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]], *, header: str | None = None) -> None:
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)
        n = len(self.problems)
        head = header or f"invalid guardrails configuration ({n} problem{'s' if n != 1 else ''})"
        self.header = header
        lines = [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in self.problems]
        super().__init__("\n".join([head + ":", *lines]))

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with its problems (a worker process hands it back to its parent).
        return _config_error, (self.problems, self.header)


def _config_error(
    problems: Sequence[tuple[str, str]], header: str | None = None
) -> PolicyConfigError:
    return PolicyConfigError(problems, header=header)


class _ValidationFailure(GuardrailsError, ValueError):
    kind = "validation"

    def __init__(self, policy: str, function: str, errors: Sequence[tuple[str, str]]) -> None:
        self.policy = policy
        self.function = function
        self.errors: tuple[tuple[str, str], ...] = tuple(errors)
        #: The failing fields alone, ``"field: problem; field: problem"``.
        self.detail = "; ".join(f"{field}: {msg}" if field else msg for field, msg in self.errors)
        super().__init__(f"policy {policy!r} ({function}): {self.kind} failed: {self.detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.policy, self.function, self.errors)


class InputValidationError(_ValidationFailure):
    """The arguments failed ``validate.input`` or ``validate.args``; ``errors`` lists each field."""

    kind = "input validation"


class OutputValidationError(_ValidationFailure):
    """The return value failed ``validate.output``; ``errors`` lists each field."""

    kind = "output validation"


class CallTimeout(GuardrailsError, TimeoutError):
    """An attempt (``timeout.attempt``) or the whole call (``timeout.total``) ran out of time.

    A ``TimeoutError``, so ``retry`` retries an attempt's timeout by default.
    """

    def __init__(self, policy: str, function: str, timeout: float, scope: str) -> None:
        self.policy = policy
        self.function = function
        self.timeout = timeout
        self.scope = scope
        self.detail = f"timeout.{scope} of {timeout:g} s passed"
        super().__init__(f"policy {policy!r} ({function}): {self.detail}")

    def __reduce__(self) -> tuple[type, tuple[str, str, float, str]]:
        return type(self), (self.policy, self.function, self.timeout, self.scope)


class CircuitOpenError(GuardrailsError):
    """The policy's circuit breaker is open: the call failed at once without running.

    ``retry_after`` is the time in seconds until the breaker lets trial calls through.
    Never retried.
    """

    def __init__(self, policy: str, function: str, retry_after: float) -> None:
        self.policy = policy
        self.function = function
        self.retry_after = retry_after
        self.detail = f"circuit open; trial calls in {retry_after:.3g} s"
        super().__init__(f"policy {policy!r} ({function}): {self.detail}")

    def __reduce__(self) -> tuple[type, tuple[str, str, float]]:
        return type(self), (self.policy, self.function, self.retry_after)


class RateLimitExceeded(GuardrailsError):
    """The policy's rate limit had no token for this attempt (within ``rate_limit.max_wait``).

    ``retry_after`` is the time in seconds until the next token.
    """

    def __init__(self, policy: str, function: str, retry_after: float) -> None:
        self.policy = policy
        self.function = function
        self.retry_after = retry_after
        self.detail = f"rate limit reached; next token in {retry_after:.3g} s"
        super().__init__(f"policy {policy!r} ({function}): {self.detail}")

    def __reduce__(self) -> tuple[type, tuple[str, str, float]]:
        return type(self), (self.policy, self.function, self.retry_after)


class BulkheadFull(GuardrailsError):
    """The policy's bulkhead had ``max_concurrent`` attempts running (for ``max_wait``)."""

    def __init__(self, policy: str, function: str, max_concurrent: int) -> None:
        self.policy = policy
        self.function = function
        self.max_concurrent = max_concurrent
        self.detail = f"bulkhead full: {max_concurrent} attempts already running"
        super().__init__(f"policy {policy!r} ({function}): {self.detail}")

    def __reduce__(self) -> tuple[type, tuple[str, str, int]]:
        return type(self), (self.policy, self.function, self.max_concurrent)


class MemoryBudgetExceeded(GuardrailsError, MemoryError):
    """The memory guard refused to start a call: resident memory is over ``memory.max_rss``,
    or the memory used on GPU ``device`` is over ``memory.max_gpu``.

    ``rss`` is the reading that was refused (bytes of the process's resident memory, or of
    the device's memory in use), ``limit`` the budget in bytes, ``device`` ``None`` for
    the process's memory, else the GPU as torch names it (``"cuda:0"``).
    """

    def __init__(
        self, policy: str, function: str, rss: int, limit: int, device: str | None = None
    ) -> None:
        self.policy = policy
        self.function = function
        self.rss = rss
        self.limit = limit
        self.device = device
        if device is None:
            self.detail = (
                f"resident memory {_fmt_bytes(rss)} is over memory.max_rss {_fmt_bytes(limit)} "
                "(after a garbage collection)"
            )
        else:
            self.detail = (
                f"{device} memory in use {_fmt_bytes(rss)} is over memory.max_gpu "
                f"{_fmt_bytes(limit)} (after a garbage collection and emptying torch's cache)"
            )
        super().__init__(f"policy {policy!r} ({function}): refused: {self.detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.policy, self.function, self.rss, self.limit, self.device)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
