"""Every YAML file under conf/ and the packaged group is composed and validated."""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from guardrails import configure
from guardrails._config import packaged_defaults_path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
POLICY_SETS = sorted(p.stem for p in (CONF / "guardrails").glob("*.yaml"))


@pytest.fixture(autouse=True, scope="module")
def _pipeline_functions() -> Iterator[None]:
    """Register the example's guarded functions (strict sets check them), then forget them."""
    importlib.import_module("examples.pipeline")
    yield
    sys.modules.pop("examples.pipeline", None)
    examples = sys.modules.get("examples")
    if examples is not None and hasattr(examples, "pipeline"):
        delattr(examples, "pipeline")
    gc.collect()


def test_there_are_at_least_two_policy_sets() -> None:
    assert {"default", "production"} <= set(POLICY_SETS)


@pytest.mark.parametrize("name", POLICY_SETS)
def test_policy_set_composes_and_validates(name: str) -> None:
    settings = configure(CONF, overrides=[f"guardrails={name}"])
    assert {"fetch_features", "predict"} <= set(settings.policies)
    fetch = settings.policies["fetch_features"]
    assert fetch.retry is not None and fetch.retry.max_attempts > 1
    assert fetch.cache is not None
    predict = settings.policies["predict"]
    assert predict.validate is not None and predict.validate.input is not None
    assert predict.memory is not None and predict.memory.max_rss is not None


def test_strict_production_sees_the_example_functions() -> None:
    from guardrails._core import SLOTS

    assert {"fetch_features", "predict"} <= {slot.name for slot in SLOTS}


def test_production_is_strict_and_inherits() -> None:
    settings = configure(CONF, overrides=["guardrails=production"])
    assert settings.strict
    predict = settings.policies["predict"]
    assert predict.base == "fetch_features" and predict.cache is None
    assert predict.retry is not None and not predict.retry.enabled
    assert predict.log == settings.policies["fetch_features"].log


def test_packaged_defaults_file() -> None:
    settings = configure(packaged_defaults_path())
    assert dict(settings.policies) == {} and settings.strict is False


def test_the_whole_app_config_composes_with_hydra_including_logging() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    assert cfg.hydra.job_logging.handlers.rich["class"] == "rich.logging.RichHandler"
    assert cfg.job.dataset in ("wine", "breast_cancer")
