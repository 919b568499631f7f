"""Batch scoring with guardrails: a wine-quality classifier scores a batch of requests.

Each request names an entity; its features come from a (simulated) remote feature store
that fails transiently, so `fetch_features` is guarded by a policy with retry and cache.
Midway through the batch the store has an outage: the policy's circuit breaker opens, calls
fail fast to a fallback (the training data's average row, `examples/fallbacks.py`), and the
breaker closes again once the store is back. The model scores pandas DataFrames (the wine
data's named columns); some requests arrive malformed (a NaN, a dropped column, a negative
measurement): `predict` is guarded by YAML column checks (`validate.args.features`), an output
check on the scores and a memory budget, so they are rejected with a message naming the column
and the request, and counted, never crash the job. Every policy lives in
conf/guardrails/*.yaml; try

    python examples/pipeline.py guardrails.policies.fetch_features.retry.max_attempts=1
    python examples/pipeline.py '~guardrails.policies.fetch_features.cache'
    python examples/pipeline.py guardrails=production
    python examples/pipeline.py job.outage.start=0 job.outage.end=0      # no outage
    python examples/pipeline.py +guardrails.allow_chaos=true \
        +guardrails.policies.fetch_features.chaos.error_rate=0.3         # a chaos drill
    python examples/pipeline.py -m job.seed=1,2     # a multirun: each job as if alone

guardrails.hydra.GuardrailsCallback (conf/config.yaml) configures each job from its config and
writes the job's statistics to guardrails_stats.json in its output directory.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script, Python puts examples/ on the path; the policies name `examples.schemas`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

import guardrails
from examples.model import FeatureStore, as_frame, train
from guardrails import InputValidationError, MemoryBudgetExceeded, guarded

log = logging.getLogger("pipeline")


@dataclass
class Services:
    store: FeatureStore | None = None
    model: object | None = None


SERVICES = Services()


@guarded("fetch_features")
def fetch_features(entity_id: int) -> pd.Series:
    """One entity's feature row from the feature store (a Series indexed by column name)."""
    assert SERVICES.store is not None
    return SERVICES.store.read(entity_id)


@guarded("predict")
def predict(request_id: str, features: pd.DataFrame) -> np.ndarray:
    """Class probabilities, one row per row of ``features`` (the model's columns by name, in
    any order: the policy has checked that each is there, float64 and within its bounds)."""
    model = SERVICES.model
    return model.predict_proba(features[model.feature_names_in_])  # type: ignore[attr-defined, no-any-return]


@dataclass
class Outcome:
    scored: int = 0
    correct: int = 0
    rejected: int = 0
    unavailable: int = 0
    reasons: list[str] = field(default_factory=list)


def malformed(batch: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """A broken copy of a batch, as upstream bugs make them: a value lost (NaN), a column
    dropped, or a measurement's sign flipped."""
    column = batch.columns[int(rng.integers(batch.shape[1]))]
    kind = rng.random()
    if kind < 1 / 3:
        return batch.drop(columns=column)
    broken = batch.copy()
    broken[column] = np.nan if kind < 2 / 3 else -broken[column]
    return broken


def score(cfg: DictConfig) -> Outcome:
    trained = train(cfg.job.dataset, cfg.job.seed)
    x_live, y_live = trained.x_live, trained.y_live
    SERVICES.model = trained.model
    SERVICES.store = FeatureStore(x_live, cfg.job.store_failure_rate, cfg.job.seed)
    log.info(
        "trained on %d rows of %s; scoring %d requests",
        len(trained.x_train),
        cfg.job.dataset,
        cfg.job.requests,
    )

    rng = np.random.default_rng(cfg.job.seed)
    outcome = Outcome()
    seen: list[int] = []
    outage = range(cfg.job.outage.start, cfg.job.outage.end)
    for i in range(cfg.job.requests):
        SERVICES.store.down = i in outage
        time.sleep(cfg.job.interval)  # requests arrive over time: the breaker's open_for passes
        if seen and rng.random() < cfg.job.repeat_fraction:
            entity = int(rng.choice(seen))
        else:
            entity = int(rng.integers(len(x_live)))
            seen.append(entity)
        try:
            row = fetch_features(entity)
        except (ConnectionError, TimeoutError):
            outcome.unavailable += 1
            continue
        request_id = f"req-{i}"
        batch = as_frame(row, request_id)  # one row, labelled by the request's id
        if rng.random() < cfg.job.malformed_fraction:
            batch = malformed(batch, rng)
        try:
            proba = predict(request_id, batch)
        except (InputValidationError, MemoryBudgetExceeded) as exc:
            outcome.rejected += 1
            outcome.reasons.append(str(exc))
            continue
        outcome.scored += 1
        outcome.correct += int(proba[0].argmax() == y_live[entity])
    return outcome


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # No configure() call: GuardrailsCallback (hydra.callbacks in conf/config.yaml) configured
    # this job from its config, and writes guardrails_stats.json when it ends.
    outcome = score(cfg)
    accuracy = outcome.correct / outcome.scored if outcome.scored else float("nan")
    fetch = guardrails.stats().get("fetch_features")
    print(
        f"scored {outcome.scored} of {cfg.job.requests} requests (accuracy {accuracy:.3f}); "
        f"rejected {outcome.rejected} malformed; {outcome.unavailable} unavailable after retries; "
        f"feature store reads: {SERVICES.store.reads if SERVICES.store else 0}; "
        f"{fetch.fallbacks if fetch else 0} served from the fallback while the breaker was open "
        f"({fetch.short_circuited if fetch else 0} calls short-circuited; breaker now "
        f"{fetch.breaker_state if fetch else None})"
    )
    guardrails.report()


if __name__ == "__main__":
    main()
