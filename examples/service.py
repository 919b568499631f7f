"""An inference service with guardrails: the example's wine classifier behind FastAPI.

    python examples/service.py --port 8000                      # conf/service.yaml
    python examples/service.py --port 8000 guardrails=production \\
        guardrails.policies.fetch_features.retry.max_attempts=2  # Hydra overrides
    GUARDRAILS_CONFIG=conf uvicorn examples.service:app --port 8000
    GUARDRAILS_REDIS_URL=redis://localhost:6379/0 GUARDRAILS_OVERRIDES=shared=redis \
        uvicorn examples.service:app --port 8000 --workers 4   # one cache, one breaker

Endpoints:

- ``POST /predict`` with ``{"request_id": "req-1", "features": {"alcohol": 14.23, ...}}``
  (the model's columns by name), ``{"request_id": "req-1", "features": [13 numbers]}`` (the
  same, in the model's column order) or ``{"request_id": "req-1", "entity_id": 12}`` (the
  features then come from the feature store). Either way the model scores a one-row
  DataFrame labelled by the request id. The model call is guarded by the ``predict`` policy
  (column checks, output checks, memory budget, bulkhead); the store lookup by
  ``fetch_features`` (retry, timeout, breaker, fallback, cache). Answers 200
  ``{"request_id", "label", "probabilities", "degraded"}`` (``degraded``: the store's
  breaker was open and the features are the population's average), 422 when the request
  fails the JSON schema (a list of features of another length than the model's columns
  included) or the policy's checks (the failing fields in ``detail``, as FastAPI lists
  them, a column's at ``["body", "features", <column>]``; a NaN or infinity echoed there
  is written as text), 400 for a body FastAPI cannot decode at all (bytes that are not
  text, an integer of more than 4,300 digits), 404 for an unknown entity, 503 with
  ``Retry-After`` when the store or the model refuses or is unavailable (breaker open with
  no fallback, rate limit, bulkhead full, memory budget, the store failing after its
  retries).
- ``GET /healthz``: the breaker of every policy that has one, and the config watcher's
  reloads; 503 while a breaker is open (half-open is 200: it needs traffic to close).
- ``GET /metrics``: Prometheus text (``guardrails.metrics.prometheus`` plus the process).
  Both answer for the process that took the connection, named by the ``X-Worker-Pid``
  header (with ``--workers N``, one of N).
- ``POST /admin/store`` ``{"down": true}``: simulate a feature-store outage; only with
  ``--admin`` (or ``SERVICE_ADMIN=1``), else 404 whatever the body.

The config is composed with Hydra from ``--config-dir`` (default ``$GUARDRAILS_CONFIG``, else
the repository's ``conf/``) and ``--config-name`` (``service``), with the overrides given
as arguments (default: ``$GUARDRAILS_OVERRIDES``, space-separated), and watched: an edit
that validates is in force within about a second, without a restart; a bad one is logged
and the config in force stays. A bad config at startup stops the service.

Several workers and replicas: with the override ``shared=redis`` (conf/shared/redis.yaml)
and a server in ``$GUARDRAILS_REDIS_URL`` (or ``guardrails.redis_url=...``), every process
shares the feature cache (a row one worker read is a Redis hit in the others, one store read
per entity across them) and the store's breaker (opened by one, it refuses the store calls of
all); Redis down or slow, each process falls back to its own cache and breaker, and no request
fails because of it. Without the override the service never imports redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import math
import os
import shlex
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, Python puts examples/ on the path; the policies name `examples.*`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import prometheus_client
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import guardrails
import guardrails.metrics.prometheus
from examples.model import DEGRADED, FeatureStore, as_frame, train
from guardrails import (
    BulkheadFull,
    CallTimeout,
    CircuitOpenError,
    GuardrailsError,
    InputValidationError,
    MemoryBudgetExceeded,
    RateLimitExceeded,
    guarded,
)

log = logging.getLogger("service")
ROOT = Path(__file__).resolve().parents[1]


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What the service runs with: its config, and the simulated model and store."""

    config: Path = ROOT / "conf"
    config_name: str = "service"
    overrides: tuple[str, ...] = ()
    watch_interval: float = 1.0
    dataset: str = "wine"
    seed: int = 7
    store_failure_rate: float = 0.25
    store_latency: float = 0.002
    admin: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    fd: int | None = None


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="examples/service.py",
        description="The example model behind FastAPI, guarded by the policies in conf/.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--fd", type=int, default=None, help="serve on this listening socket")
    p.add_argument(
        "--config-dir",
        type=Path,
        default=Path(env.get("GUARDRAILS_CONFIG") or ROOT / "conf"),
        help="Hydra config directory, or a YAML file (default: $GUARDRAILS_CONFIG, else conf/)",
    )
    p.add_argument("--config-name", default=env.get("SERVICE_CONFIG_NAME", "service"))
    p.add_argument(
        "--watch-interval",
        type=float,
        default=float(env.get("SERVICE_WATCH_INTERVAL", "1.0")),
        help="seconds between checks of the config files for changes",
    )
    p.add_argument(
        "--dataset",
        choices=["wine", "breast_cancer"],
        default=env.get("SERVICE_DATASET", "wine"),
        help="breast_cancer has other columns than wine's: drop predict's column checks with "
        "'~guardrails.policies.predict.validate.args.features'",
    )
    p.add_argument("--seed", type=int, default=int(env.get("SERVICE_SEED", "7")))
    p.add_argument(
        "--store-failure-rate",
        type=float,
        default=float(env.get("SERVICE_STORE_FAILURE_RATE", "0.25")),
        help="share of feature-store reads that fail transiently",
    )
    p.add_argument(
        "--store-latency",
        type=float,
        default=float(env.get("SERVICE_STORE_LATENCY", "0.002")),
        help="seconds each feature-store read takes",
    )
    p.add_argument(
        "--admin",
        action="store_true",
        default=env.get("SERVICE_ADMIN", "") not in ("", "0"),
        help="enable POST /admin/store (simulated outages)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides (default: $GUARDRAILS_OVERRIDES, space-separated)",
    )
    return p


def options(argv: Sequence[str] = ()) -> Options:
    """Options from the command line, with defaults from the environment."""
    # Intermixed: overrides and options in any order (`shared=redis --admin x=1`).
    args = parser().parse_intermixed_args(list(argv))
    overrides = args.overrides or shlex.split(os.environ.get("GUARDRAILS_OVERRIDES", ""))
    return Options(
        config=args.config_dir,
        config_name=args.config_name,
        overrides=tuple(overrides),
        watch_interval=args.watch_interval,
        dataset=args.dataset,
        seed=args.seed,
        store_failure_rate=args.store_failure_rate,
        store_latency=args.store_latency,
        admin=args.admin,
        host=args.host,
        port=args.port,
        fd=args.fd,
    )


# --- the guarded calls -----------------------------------------------------------------------


@dataclass
class Service:
    """What the guarded functions use; set up when the app starts."""

    options: Options = field(default_factory=Options)
    model: Any = None
    features: list[str] = field(default_factory=list)  # the model's columns, in order
    store: FeatureStore | None = None
    watcher: guardrails.Watcher | None = None


SERVICE = Service()


@guarded("fetch_features")
async def fetch_features(entity_id: int) -> pd.Series:
    """One entity's feature row from the feature store (a Series indexed by column name)."""
    assert SERVICE.store is not None, "the service has not started"
    return await SERVICE.store.read_async(entity_id, SERVICE.options.store_latency)


@guarded("predict")
async def predict(request_id: str, features: pd.DataFrame) -> np.ndarray:
    """Class probabilities, one row per row of ``features`` (the model's columns by name, in
    any order: the policy has checked them); the model runs in a worker thread so the event
    loop keeps serving."""
    ordered = features[SERVICE.features]
    result: np.ndarray = await asyncio.to_thread(SERVICE.model.predict_proba, ordered)
    return result


# --- the app ---------------------------------------------------------------------------------


class PredictBody(BaseModel):
    """A request: an id and either the features (``{column: number}``, or the numbers in the
    model's column order) or the entity whose features to look up.

    Only the JSON shape is checked here; the columns and values are the ``predict`` policy's
    business (``validate`` in conf/guardrails/*.yaml), so a policy edit changes what is
    accepted. The shape is strict: ``true`` or ``"1"`` is not a number (lax parsing would
    read them as 1.0), ``3.0`` is not an entity id.
    """

    model_config = ConfigDict(strict=True)

    request_id: str
    features: dict[str, float] | list[float] | None = None
    entity_id: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> PredictBody:
        if (self.features is None) == (self.entity_id is None):
            raise ValueError("give exactly one of features or entity_id")
        return self


class StoreBody(BaseModel):
    model_config = ConfigDict(strict=True)

    down: bool


class StoreUnavailable(Exception):
    """The feature store failed after the policy's retries (not a guardrails refusal)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"feature store unavailable: {cause}")
        self.policy = "fetch_features"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    opts: Options = app.state.options or options()
    SERVICE.options = opts
    trained = train(opts.dataset, opts.seed)
    SERVICE.model = trained.model
    SERVICE.features = trained.features
    SERVICE.store = FeatureStore(trained.x_live, opts.store_failure_rate, opts.seed)
    guardrails.metrics.prometheus.register()
    # Configures now (a bad config raises: the service does not start), then reloads on
    # every change to the config's YAML files.
    SERVICE.watcher = guardrails.watch(
        opts.config,
        overrides=opts.overrides,
        interval=opts.watch_interval,
        config_name=opts.config_name,
    )
    log.info(
        "serving %s (%d live entities) with the policies of %s",
        opts.dataset,
        len(trained.x_live),
        opts.config,
    )
    try:
        yield
    finally:
        SERVICE.watcher.stop()
        SERVICE.watcher = None


def create_app(opts: Options | None = None) -> FastAPI:
    """The FastAPI app; ``opts`` default to the environment's (read when it starts)."""
    app = FastAPI(title="guardrails example: wine classifier", lifespan=lifespan)
    app.state.options = opts

    @app.post("/predict")
    async def predict_endpoint(body: PredictBody) -> dict[str, Any]:
        DEGRADED.set(False)
        if isinstance(body.features, list):
            row = as_frame(_by_name(body.features), body.request_id)
        elif body.features is not None:
            row = as_frame(body.features, body.request_id)
        else:
            assert body.entity_id is not None and SERVICE.store is not None
            if body.entity_id >= len(SERVICE.store.rows):
                raise HTTPException(404, f"unknown entity {body.entity_id}")
            try:
                found = await fetch_features(body.entity_id)
            except (ConnectionError, CallTimeout) as exc:
                raise StoreUnavailable(exc) from exc
            row = as_frame(found, body.request_id)
        proba = await predict(body.request_id, row)
        return {
            "request_id": body.request_id,
            "label": int(proba[0].argmax()),
            "probabilities": [float(p) for p in proba[0]],
            "degraded": DEGRADED.get(),
        }

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        breakers = {
            name: s.breaker_state
            for name, s in guardrails.stats().items()
            if s.breaker_state is not None
        }
        is_open = sorted(name for name, state in breakers.items() if state == "open")
        watcher = SERVICE.watcher
        assert watcher is not None, "the service has not started"
        body: dict[str, Any] = {
            "status": "unavailable" if is_open else "ok",
            "open_breakers": is_open,
            "breakers": breakers,
            "config": {  # did my edit apply? (the last failed reload's problems, if any)
                "source": str(watcher.source),
                "reloads": watcher.reloads,
                "failed_reloads": watcher.failures,
                "last_error": None if watcher.last_error is None else str(watcher.last_error),
            },
        }
        return JSONResponse(body, status_code=503 if is_open else 200, headers=_worker())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(
            prometheus_client.generate_latest(prometheus_client.REGISTRY),
            media_type=prometheus_client.CONTENT_TYPE_LATEST,
            headers=_worker(),
        )

    @app.post("/admin/store")
    async def admin_store(request: Request) -> JSONResponse:
        # The switch is checked before the body is read: without --admin every request is
        # a 404, never a 422 that would say the endpoint exists.
        if not SERVICE.options.admin or SERVICE.store is None:
            raise HTTPException(404, "Not Found")
        try:
            body = StoreBody.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
            ) from None
        SERVICE.store.down = body.down
        log.warning("feature store %s (simulated)", "DOWN" if body.down else "back up")
        return JSONResponse({"down": SERVICE.store.down})

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, except that a NaN or infinite number the client sent (JSON's
        # common extension, which the parser takes) is echoed as text: strict JSON has no
        # way to write it, and FastAPI's handler answered a 500 for `{"entity_id": NaN}`.
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(InputValidationError)
    async def rejected(request: Request, exc: InputValidationError) -> JSONResponse:
        # "features.alcohol" (a column of the features frame) is at body.features.alcohol.
        detail = [
            {
                "loc": ["body", *name.split(".", 1)] if name else ["body"],
                "msg": msg,
                "type": "guardrails",
            }
            for name, msg in exc.errors
        ]
        return JSONResponse({"detail": detail, "policy": exc.policy}, status_code=422)

    @app.exception_handler(GuardrailsError)
    async def refused(request: Request, exc: GuardrailsError) -> JSONResponse:
        if isinstance(exc, CircuitOpenError | RateLimitExceeded):
            retry_after = exc.retry_after
        elif isinstance(exc, BulkheadFull | MemoryBudgetExceeded | CallTimeout):
            retry_after = 1.0
        else:
            # OutputValidationError, a PolicyConfigError: our bug, not the client's. The
            # guarded call has logged it; the client learns no internals.
            return JSONResponse(
                {"detail": "internal error", "error": type(exc).__name__}, status_code=500
            )
        return _unavailable(getattr(exc, "policy", None), type(exc).__name__, exc, retry_after)

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return _unavailable(exc.policy, type(exc.__cause__).__name__, exc, 1.0)

    return app


def _worker() -> dict[str, str]:
    """The header naming the process that answered: with ``uvicorn --workers N`` each
    connection is served by one of N processes, each with its own breaker view and metrics."""
    return {"X-Worker-Pid": str(os.getpid())}


def _by_name(values: list[float]) -> dict[str, float]:
    """Features given as a list, by the model's column names; a list of another length is
    refused as FastAPI refuses a body of the wrong shape (a 422 naming ``features``): which
    number is missing cannot be told, so no column can be named."""
    names = SERVICE.features
    if len(values) != len(names):
        raise RequestValidationError(
            [
                {
                    "type": "list_length",
                    "loc": ("body", "features"),
                    "msg": f"expected {len(names)} numbers, the model's columns in order "
                    f"({', '.join(names)}), or an object of them by name; got {len(values)}",
                    "input": values,
                }
            ]
        )
    return dict(zip(names, values, strict=True))


def _finite(value: Any) -> Any:
    """``value`` (decoded JSON) with each NaN or infinite float as text ("nan", "inf")."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value


def _unavailable(
    policy: str | None, error: str, exc: Exception, retry_after: float
) -> JSONResponse:
    return JSONResponse(
        {"detail": str(exc), "policy": policy, "error": error},
        status_code=503,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


app = create_app()


def main(argv: Sequence[str] | None = None) -> None:
    opts = options(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = uvicorn.Config(
        create_app(opts), host=opts.host, port=opts.port, log_level="info", access_log=False
    )
    # A listening socket handed over by a supervisor (or a test): any address family.
    sockets = None if opts.fd is None else [socket.socket(fileno=opts.fd)]
    uvicorn.Server(config).run(sockets=sockets)


if __name__ == "__main__":
    # Run as a script this file is `__main__`; the service runs from the module
    # `examples.service`, as under `uvicorn examples.service:app`, so that its guarded
    # functions have the same qualified names there: the names are part of their Redis keys,
    # and replicas started either way share one cache (`shared=redis`).
    importlib.import_module("examples.service").main()
