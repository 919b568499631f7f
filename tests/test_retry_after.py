"""retry.wait.retry_after: wait as long as the failure asks (its ``retry_after``, or the
``Retry-After`` header of a real httpx or requests HTTP error), capped at wait.max."""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import Callable
from typing import Any, ClassVar

import httpx
import pytest
import requests

import guardrails
from guardrails import PolicyConfigError, RateLimitExceeded, configure
from guardrails.layers.retry import requested_delay
from guardrails.testing import FakeClock
from tests.twins import guard_as

URL = "https://api.example.com/v1/predict"


def policy(*, retry_on: list[str] | None = None, **wait: Any) -> None:
    retry: dict[str, Any] = {
        "max_attempts": 3,
        "wait": {"initial": 1, "max": 100, "multiplier": 2, "jitter": 0, "retry_after": True}
        | wait,
    }
    if retry_on is not None:
        retry["retry_on"] = retry_on
    configure({"policies": {"r": {"log": None, "retry": retry}}})


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def failing_once(make: Callable[[], BaseException]) -> Callable[[], str]:
    attempts = 0

    def fn() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise make()
        return "ok"

    return fn


class Throttled(ConnectionError):
    def __init__(self, retry_after: object) -> None:
        super().__init__("throttled")
        self.retry_after = retry_after


def httpx_error(status: int = 429, **headers: str) -> httpx.HTTPStatusError:
    response = httpx.Response(status, headers=headers or None, request=httpx.Request("GET", URL))
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        return exc
    raise AssertionError("raise_for_status() did not raise")


def requests_error(status: int = 429, **headers: str) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response.url = URL
    response.reason = "Too Many Requests"
    response.headers.update(headers)
    try:
        response.raise_for_status()
    except requests.HTTPError as exc:
        return exc
    raise AssertionError("raise_for_status() did not raise")


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def one_wait(kind: str, make: Callable[[], BaseException], clock: FakeClock) -> float:
    f = guard_as(kind, failing_once(make), "r")
    assert f() == "ok"
    [wait] = clock.sleeps
    return wait


# --- from an attribute ---------------------------------------------------------------------


def test_the_retry_after_attribute_replaces_the_backoff(kind: str, clock: FakeClock) -> None:
    policy(jitter=0.5)
    assert one_wait(kind, lambda: Throttled(7), clock) == 7  # no jitter added
    assert guardrails.stats()["r"].retries == 1


def test_a_rate_limit_refusal_waits_for_its_next_token(kind: str, clock: FakeClock) -> None:
    policy(retry_on=["ConnectionError", "guardrails:RateLimitExceeded"])
    assert one_wait(kind, lambda: RateLimitExceeded("r", "fn", 2.5), clock) == 2.5


def test_the_wait_is_capped_at_max(kind: str, clock: FakeClock) -> None:
    policy(max=30)
    assert one_wait(kind, lambda: Throttled(3600), clock) == 30


@pytest.mark.parametrize(
    ("value", "wait"),
    [
        (0, 0.0),
        (-5, 0.0),  # already passed
        (1.25, 1.25),
        ("12", 12.0),
        (b"3", 3.0),
        (datetime.timedelta(seconds=90), 90.0),
        (float("inf"), 100.0),
        (10**400, 100.0),  # too large for a float: long, so the cap
        (float("nan"), 1.0),  # nothing readable: the backoff
        ("soon", 1.0),
        ("\u0663\u0660", 1.0),  # Arabic-Indic "30": HTTP's DIGIT is ASCII only
        ("\uff13\uff10", 1.0),  # fullwidth "30"
        (True, 1.0),
        (None, 1.0),
        ([3], 1.0),
    ],
)
def test_attribute_values(value: object, wait: float, clock: FakeClock) -> None:
    policy()
    assert one_wait("sync", lambda: Throttled(value), clock) == wait


def test_off_by_default(kind: str, clock: FakeClock) -> None:
    configure({"policies": {"r": {"retry": {"wait": {"initial": 1, "jitter": 0}}}}})
    assert one_wait(kind, lambda: Throttled(7), clock) == 1
    assert guardrails.policy("r").retry.wait.retry_after is False  # type: ignore[union-attr]


def test_every_failure_asks_anew(kind: str, clock: FakeClock) -> None:
    asked = iter([Throttled(5), ConnectionError("no hint"), Throttled(3)])
    attempts = 0

    def fn() -> str:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise next(asked)
        return "ok"

    configure(
        {
            "policies": {
                "r": {
                    "retry": {
                        "max_attempts": 4,
                        "wait": {"initial": 1, "max": 100, "jitter": 0, "retry_after": True},
                    }
                }
            }
        }
    )
    assert guard_as(kind, fn, "r")() == "ok"
    assert clock.sleeps == [5, 2, 3]  # the second failure had no hint: backoff of attempt 2


# --- from an HTTP error's Retry-After header -----------------------------------------------


def test_httpx_retry_after_in_seconds(kind: str, clock: FakeClock) -> None:
    policy(retry_on=["httpx:HTTPStatusError"])
    assert one_wait(kind, lambda: httpx_error(**{"Retry-After": "3"}), clock) == 3


def test_httpx_retry_after_as_an_http_date(kind: str, clock: FakeClock) -> None:
    policy(retry_on=["httpx:HTTPStatusError"], max=1000)
    wait = one_wait(kind, lambda: httpx_error(**{"Retry-After": http_date(60)}), clock)
    assert 50 < wait <= 60  # an HTTP date has whole seconds; wall-clock time passes


def test_requests_retry_after_in_seconds(kind: str, clock: FakeClock) -> None:
    policy(retry_on=["requests:HTTPError"])
    assert one_wait(kind, lambda: requests_error(**{"Retry-After": "4"}), clock) == 4


def test_requests_retry_after_as_an_http_date(kind: str, clock: FakeClock) -> None:
    policy(retry_on=["requests:HTTPError"], max=1000)
    wait = one_wait(kind, lambda: requests_error(**{"Retry-After": http_date(120)}), clock)
    assert 110 < wait <= 120


@pytest.mark.parametrize("error", [httpx_error, requests_error])
def test_an_http_date_past_max_is_capped(
    error: Callable[..., BaseException], clock: FakeClock
) -> None:
    policy(retry_on=["httpx:HTTPStatusError", "requests:HTTPError"], max=30)
    assert one_wait("sync", lambda: error(**{"Retry-After": http_date(3600)}), clock) == 30


@pytest.mark.parametrize("error", [httpx_error, requests_error])
def test_an_http_date_in_the_past_means_now(
    error: Callable[..., BaseException], clock: FakeClock
) -> None:
    policy(retry_on=["httpx:HTTPStatusError", "requests:HTTPError"])
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert one_wait("sync", lambda: error(**{"Retry-After": past}), clock) == 0


@pytest.mark.parametrize("error", [httpx_error, requests_error])
@pytest.mark.parametrize(
    "header",
    [
        {"Retry-After": "soon"},
        {"Retry-After": ""},
        {"Retry-After": "-3"},
        {"Retry-After": "Wed, 99 Oct 2015 07:28:00 GMT"},
        {"Retry-After": "1e400"},
        {},
    ],
)
def test_a_missing_or_garbage_header_gets_the_backoff(
    error: Callable[..., BaseException], header: dict[str, str], clock: FakeClock
) -> None:
    policy(retry_on=["httpx:HTTPStatusError", "requests:HTTPError"])
    assert one_wait("sync", lambda: error(**header), clock) == 1


def test_a_case_insensitive_header(clock: FakeClock) -> None:
    policy(retry_on=["httpx:HTTPStatusError"])
    assert one_wait("sync", lambda: httpx_error(**{"retry-after": "6"}), clock) == 6


def test_any_response_with_a_headers_mapping_is_read() -> None:
    class Response:
        headers: ClassVar[dict[str, str]] = {"retry-after": "8"}

    class ApiError(Exception):
        response = Response()

    assert requested_delay(ApiError()) == 8
    assert requested_delay(ValueError()) is None


def test_a_hostile_exception_says_nothing(kind: str, clock: FakeClock) -> None:
    class Hostile(ConnectionError):
        @property
        def retry_after(self) -> float:
            raise RuntimeError("no")

        @property
        def response(self) -> Any:
            raise RuntimeError("no")

    class HostileHeaders(ConnectionError):
        class response:  # an attribute holding a class, like a response object
            class headers:
                @staticmethod
                def get(name: str) -> str:
                    raise KeyError(name)

    policy()
    assert one_wait(kind, Hostile, clock) == 1
    clock.sleeps.clear()
    assert one_wait(kind, HostileHeaders, clock) == 1


# --- with the deadline ---------------------------------------------------------------------


def test_the_deadline_judges_the_requested_wait(kind: str, clock: FakeClock) -> None:
    waits = iter([Throttled(2), Throttled(10)])
    f = guard_as(kind, lambda: (_ for _ in ()).throw(next(waits)), "r")
    configure(
        {
            "policies": {
                "r": {
                    "retry": {
                        "max_attempts": 5,
                        "deadline": "5s",
                        "wait": {"initial": 0.5, "jitter": 0, "retry_after": True},
                    }
                }
            }
        }
    )
    with pytest.raises(ConnectionError) as exc:
        f()
    assert clock.sleeps == [2]  # a wait of 10 s would pass the deadline (backoff: 1 s)
    assert exc.value.__notes__ == [
        "guardrails: policy 'r' gave up after 2 attempts (retry.deadline=5s would be passed)"
    ]


def test_a_short_requested_wait_fits_where_the_backoff_would_not(
    kind: str, clock: FakeClock
) -> None:
    configure(
        {
            "policies": {
                "r": {
                    "retry": {
                        "deadline": "5s",
                        "wait": {"initial": 10, "max": 60, "jitter": 0, "retry_after": True},
                    }
                }
            }
        }
    )
    assert one_wait(kind, lambda: Throttled(1), clock) == 1


# --- config --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", 1, "true"])
def test_retry_after_is_a_boolean(value: object) -> None:
    with pytest.raises(PolicyConfigError) as exc:
        configure({"policies": {"r": {"retry": {"wait": {"retry_after": value}}}}})
    [(path, message)] = exc.value.problems
    assert path == "guardrails.policies.r.retry.wait.retry_after"
    assert "valid boolean" in message
