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
        "settings",
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


def test_errors_are_named_where_users_import_them_from() -> None:
    import pickle
    import traceback

    for name in guardrails.__all__:
        error = getattr(guardrails, name)
        if isinstance(error, type) and issubclass(error, BaseException):
            assert error.__module__ == "guardrails", name
    exc = guardrails.PolicyConfigError([("guardrails.policies.p.retry", "bad")])
    shown = "".join(traceback.format_exception_only(type(exc), exc))
    assert shown.startswith("guardrails.PolicyConfigError: "), shown
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is guardrails.PolicyConfigError and again.problems == exc.problems
    assert str(again) == str(exc)
    headed = guardrails.PolicyConfigError([("k", "v")], header="from $GUARDRAILS_CONFIG")
    assert str(pickle.loads(pickle.dumps(headed))) == str(headed)
    timeout = pickle.loads(pickle.dumps(guardrails.CallTimeout("p", "f", 1.5, "attempt")))
    assert (timeout.policy, timeout.timeout, timeout.scope) == ("p", 1.5, "attempt")


def test_every_public_error_survives_a_trip_to_another_process() -> None:
    # A worker process (multiprocessing, joblib, Dask) pickles the error it hands back.
    import pickle

    made = [
        guardrails.PolicyConfigError([("guardrails.policies.p.retry", "bad")]),
        guardrails.InputValidationError("p", "f", [("x", "expected >= 0")]),
        guardrails.OutputValidationError("p", "f", [("return", "not a float")]),
        guardrails.MemoryBudgetExceeded("p", "f", 2048, 1024),
        guardrails.MemoryBudgetExceeded("p", "f", 2048, 1024, "cuda:0"),
        guardrails.CallTimeout("p", "f", 1.5, "attempt"),
        guardrails.CircuitOpenError("p", "f", 2.0),
        guardrails.RateLimitExceeded("p", "f", 0.25),
        guardrails.BulkheadFull("p", "f", 3),
    ]
    public = {
        name
        for name in guardrails.__all__
        if isinstance(getattr(guardrails, name), type)
        and issubclass(getattr(guardrails, name), BaseException)
        and name != "GuardrailsError"
    }
    assert {type(e).__name__ for e in made} == public
    assert made[4].device == "cuda:0" and made[3].device is None
    for exc in made:
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc) and str(again) == str(exc)
        assert vars(again) == vars(exc), type(exc).__name__
