"""guardrails: one decorator for retry, validation, caching, memory guards and logging,
each function's behaviour read from Hydra YAML.

    from guardrails import guarded

    @guarded("fetch_features")
    def fetch_features(user_id: str) -> dict: ...
"""

from __future__ import annotations

from guardrails._chain import LAYER_NAMES
from guardrails._core import (
    clear_caches,
    configure,
    guarded,
    policy,
    reset_stats,
    settings,
    stats,
)
from guardrails._errors import (
    BulkheadFull,
    CallTimeout,
    CircuitOpenError,
    GuardrailsError,
    InputValidationError,
    MemoryBudgetExceeded,
    OutputValidationError,
    PolicyConfigError,
    RateLimitExceeded,
)
from guardrails._policy import Policy, Settings
from guardrails._report import report
from guardrails._stats import PolicyStats
from guardrails._watch import Watcher, watch

# Tracebacks, reprs and pickles name each error where users import it from
# (guardrails.PolicyConfigError, not guardrails._errors.PolicyConfigError).
for _error in (
    BulkheadFull,
    CallTimeout,
    CircuitOpenError,
    GuardrailsError,
    InputValidationError,
    MemoryBudgetExceeded,
    OutputValidationError,
    PolicyConfigError,
    RateLimitExceeded,
):
    _error.__module__ = __name__
del _error

__all__ = [
    "LAYER_NAMES",
    "BulkheadFull",
    "CallTimeout",
    "CircuitOpenError",
    "GuardrailsError",
    "InputValidationError",
    "MemoryBudgetExceeded",
    "OutputValidationError",
    "Policy",
    "PolicyConfigError",
    "PolicyStats",
    "RateLimitExceeded",
    "Settings",
    "Watcher",
    "clear_caches",
    "configure",
    "guarded",
    "policy",
    "report",
    "reset_stats",
    "settings",
    "stats",
    "watch",
]
