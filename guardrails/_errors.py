"""The public exceptions. Each subclasses the built-in a caller would catch anyway."""

from __future__ import annotations

from collections.abc import Sequence


class GuardrailsError(Exception):
    """Base of every error guardrails raises."""


class PolicyConfigError(GuardrailsError, ValueError):
    """The configuration is invalid; ``problems`` lists ``(dotted_path, message)`` pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]], *, header: str | None = None) -> None:
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)
        n = len(self.problems)
        head = header or f"invalid guardrails configuration ({n} problem{'s' if n != 1 else ''})"
        lines = [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in self.problems]
        super().__init__("\n".join([head + ":", *lines]))


class _ValidationFailure(GuardrailsError, ValueError):
    kind = "validation"

    def __init__(self, policy: str, function: str, errors: Sequence[tuple[str, str]]) -> None:
        self.policy = policy
        self.function = function
        self.errors: tuple[tuple[str, str], ...] = tuple(errors)
        #: The failing fields alone, ``"field: problem; field: problem"``.
        self.detail = "; ".join(f"{field}: {msg}" if field else msg for field, msg in self.errors)
        super().__init__(f"policy {policy!r} ({function}): {self.kind} failed: {self.detail}")


class InputValidationError(_ValidationFailure):
    """The arguments failed ``validate.input`` or ``validate.args``; ``errors`` lists each field."""

    kind = "input validation"


class OutputValidationError(_ValidationFailure):
    """The return value failed ``validate.output``; ``errors`` lists each field."""

    kind = "output validation"


class MemoryBudgetExceeded(GuardrailsError, MemoryError):
    """The memory guard refused to start a call: resident memory is over ``memory.max_rss``."""

    def __init__(self, policy: str, function: str, rss: int, limit: int) -> None:
        self.policy = policy
        self.function = function
        self.rss = rss
        self.limit = limit
        self.detail = (
            f"resident memory {_fmt_bytes(rss)} is over memory.max_rss {_fmt_bytes(limit)} "
            "(after a garbage collection)"
        )
        super().__init__(f"policy {policy!r} ({function}): refused: {self.detail}")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
