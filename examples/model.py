"""The example model and its (simulated) feature store, shared by the batch job
(examples/pipeline.py) and the inference service (examples/service.py).

A scikit-learn classifier is trained on a dataset scikit-learn ships, loaded as a pandas
DataFrame with its real column names (``alcohol``, ``malic_acid``, ...); the held-out rows are
the "live" entities whose features a remote feature store serves, one row (a Series indexed by
column name) per entity. The store fails transiently at a seeded rate, and refuses every read
while ``down`` is set (an outage). The model scores DataFrames: ``as_frame`` turns one
request's features into a one-row frame labelled by the request's id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from examples.fallbacks import population_mean, remember_population

#: The datasets the examples can train on, by the name the configs use.
DATASETS: dict[str, Callable[..., Any]] = {
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
}


@dataclass(frozen=True)
class Trained:
    """A fitted model, the rows it was trained on and the held-out ("live") rows: frames of
    named float64 columns and Series of class labels; the live rows are numbered 0, 1, ...
    (the entity ids the feature store serves)."""

    model: Pipeline
    x_train: pd.DataFrame
    y_train: pd.Series
    x_live: pd.DataFrame
    y_live: pd.Series

    @property
    def features(self) -> list[str]:
        """The model's feature columns, in the order it was trained on."""
        return [str(name) for name in self.model.feature_names_in_]


def train(dataset: str, seed: int) -> Trained:
    """Fit a scaler + logistic regression on 60% of ``dataset``; the other 40% is live.

    Also keeps the training data's average row for the fallback
    (``examples.fallbacks:population_mean``).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {sorted(DATASETS)}")
    x, y = DATASETS[dataset](return_X_y=True, as_frame=True)
    x_train, x_live, y_train, y_live = train_test_split(
        x, y, test_size=0.4, random_state=seed, stratify=y
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x_train, y_train)  # on a frame: the model knows its columns by name
    remember_population(x_train)
    live = x_live.reset_index(drop=True), y_live.reset_index(drop=True)
    return Trained(model, x_train, y_train, *live)


def as_frame(features: Mapping[str, float] | pd.Series, request_id: str) -> pd.DataFrame:
    """One request's features (a feature-store row, or ``{column: value}``) as the one-row
    float64 frame the model scores, its row labelled by the request's id (so a check that
    fails names the request)."""
    index = pd.Index([request_id], name="request_id")
    return pd.DataFrame([features], index=index, dtype="float64")


class FeatureStore:
    """A remote feature store stand-in: real feature rows, seeded transient failures, and
    an outage while ``down`` is set."""

    def __init__(self, rows: pd.DataFrame, failure_rate: float, seed: int) -> None:
        self.rows = rows
        self.failure_rate = failure_rate
        self.rng = np.random.default_rng(seed)
        self.reads = 0
        self.down = False

    def read(self, entity_id: int) -> pd.Series:
        """The entity's feature row: a float64 Series indexed by column name."""
        self.reads += 1
        if self.down:
            raise ConnectionError("feature store: connection refused (outage)")
        if self.rng.random() < self.failure_rate:
            raise ConnectionError(f"feature store: connection reset reading entity {entity_id}")
        return self.rows.iloc[entity_id].copy()

    async def read_async(self, entity_id: int, latency: float = 0.0) -> pd.Series:
        """``read`` over a (simulated) network round trip of ``latency`` seconds."""
        await asyncio.sleep(latency)
        return self.read(entity_id)


#: Set in a request's context when its features came from the fallback (a degraded answer).
DEGRADED: ContextVar[bool] = ContextVar("DEGRADED", default=False)


def degraded_features(entity_id: int) -> pd.Series:
    """The service's fallback for ``fetch_features``: the training data's average row, and
    the request is marked degraded (``DEGRADED``) so the response can say so."""
    row = population_mean(entity_id)
    DEGRADED.set(True)
    return row
