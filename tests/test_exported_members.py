import guardrails


def test_public_names() -> None:
    assert guardrails.__all__ == sorted(guardrails.__all__, key=lambda n: (not n.isupper(), n))
    assert set(guardrails.__all__) == {
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
        "stats",
        "watch",
    }
    for name in guardrails.__all__:
        assert getattr(guardrails, name) is not None


def test_exceptions_subclass_what_callers_catch() -> None:
    assert issubclass(guardrails.PolicyConfigError, ValueError)
    assert issubclass(guardrails.InputValidationError, ValueError)
    assert issubclass(guardrails.OutputValidationError, ValueError)
    assert issubclass(guardrails.MemoryBudgetExceeded, MemoryError)
    assert issubclass(guardrails.CallTimeout, TimeoutError)  # so retry_on retries it
    for name in (
        "CallTimeout",
        "CircuitOpenError",
        "RateLimitExceeded",
        "BulkheadFull",
        "PolicyConfigError",
        "InputValidationError",
        "OutputValidationError",
        "MemoryBudgetExceeded",
    ):
        assert issubclass(getattr(guardrails, name), guardrails.GuardrailsError)


def test_errors_survive_pickling_with_their_fields() -> None:
    """A worker process hands its exception to the parent by pickle."""
    import pickle

    errors = [
        guardrails.CallTimeout("p", "f", 2.0, "attempt"),
        guardrails.CircuitOpenError("p", "f", 12.5),
        guardrails.RateLimitExceeded("p", "f", 0.25),
        guardrails.BulkheadFull("p", "f", 4),
    ]
    for error in errors:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)
        assert vars(back) == vars(error)
