import guardrails


def test_public_names() -> None:
    assert guardrails.__all__ == sorted(guardrails.__all__, key=lambda n: (not n.isupper(), n))
    assert set(guardrails.__all__) == {
        "LAYER_NAMES",
        "GuardrailsError",
        "InputValidationError",
        "MemoryBudgetExceeded",
        "OutputValidationError",
        "Policy",
        "PolicyConfigError",
        "PolicyStats",
        "Settings",
        "clear_caches",
        "configure",
        "guarded",
        "policy",
        "report",
        "reset_stats",
        "stats",
    }
    for name in guardrails.__all__:
        assert getattr(guardrails, name) is not None


def test_exceptions_subclass_what_callers_catch() -> None:
    assert issubclass(guardrails.PolicyConfigError, ValueError)
    assert issubclass(guardrails.InputValidationError, ValueError)
    assert issubclass(guardrails.OutputValidationError, ValueError)
    assert issubclass(guardrails.MemoryBudgetExceeded, MemoryError)
    for name in (
        "PolicyConfigError",
        "InputValidationError",
        "OutputValidationError",
        "MemoryBudgetExceeded",
    ):
        assert issubclass(getattr(guardrails, name), guardrails.GuardrailsError)
