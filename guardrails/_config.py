"""Where configuration comes from. The only module that imports OmegaConf and Hydra.

Every source becomes a plain ``dict`` (the ``guardrails`` node, merged over the packaged
defaults) before validation, so nothing past this module ever sees a ``DictConfig``.
Composing a config directory uses Hydra's config loader directly, with its own search
path: it never initialises Hydra's global state, so it is safe from any thread and inside
a running ``@hydra.main`` app.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from guardrails._errors import PolicyConfigError
from guardrails._policy import ROOT, Settings, build_settings, deep_merge

ENV_VAR = "GUARDRAILS_CONFIG"
_compose_lock = threading.Lock()


def packaged_defaults_path() -> Path:
    """The embedded default config (``guardrails/conf/guardrails/default.yaml``)."""
    return Path(str(resources.files("guardrails.conf").joinpath("guardrails", "default.yaml")))


def load(
    source: Any = None,
    *,
    overrides: Sequence[str] = (),
    config_name: str = "config",
) -> Settings:
    """Read, merge and validate a configuration from any supported source."""
    node, label = _read(source, overrides, config_name)
    return build_settings(deep_merge(_packaged(), node), label)


def load_lazy_default() -> Settings:
    """What a guarded call uses when nothing was configured: ``$GUARDRAILS_CONFIG`` or defaults."""
    path = os.environ.get(ENV_VAR)
    if path:
        return load(path)
    return load(None)


@functools.cache
def _packaged() -> dict[str, Any]:
    """The packaged defaults, read once (nothing downstream mutates the merged dicts)."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(OmegaConf.load(packaged_defaults_path()), resolve=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def _read(source: Any, overrides: Sequence[str], config_name: str) -> tuple[dict[str, Any], str]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(overrides, str):
        raise TypeError("overrides is a sequence of override strings, not one string")
    if source is None:
        _no_overrides(overrides, "the packaged defaults")
        return {}, "packaged defaults"
    if isinstance(source, DictConfig):
        _no_overrides(overrides, "a DictConfig")
        return _node(_to_plain(source), "config object"), "config object"
    if isinstance(source, Mapping):
        _no_overrides(overrides, "a mapping")
        return _node(_plain_mapping(source), "mapping"), "mapping"
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.is_dir():
            label = f"{path}/{config_name}.yaml"
            return _node(compose(path, config_name, overrides), label), label
        if path.is_file():
            _no_overrides(overrides, "a YAML file")
            try:
                loaded = OmegaConf.load(path)
            except Exception as exc:  # yaml's and OmegaConf's errors share no base class
                raise PolicyConfigError([(str(path), f"cannot read YAML: {exc}")]) from None
            if not isinstance(loaded, DictConfig):
                raise PolicyConfigError([(str(path), "expected a YAML mapping at the top")])
            return _node(_to_plain(loaded), str(path)), str(path)
        raise PolicyConfigError(
            [(str(path), "no such file or directory (expected a YAML file or a config directory)")]
        )
    raise TypeError(
        "configure() takes None, a DictConfig, a mapping, a YAML file path or a config "
        f"directory; got {type(source).__name__}"
    )


def _no_overrides(overrides: Sequence[str], what: str) -> None:
    if overrides:
        raise TypeError(
            f"overrides apply when composing a config directory with Hydra, not to {what}"
        )


def _to_plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        raise PolicyConfigError([(key, str(exc).splitlines()[0])]) from None
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def _plain_mapping(source: Mapping[Any, Any]) -> dict[str, Any]:
    from omegaconf import DictConfig, ListConfig

    out: dict[str, Any] = {}
    for key, raw in source.items():
        value = raw
        if isinstance(value, DictConfig | ListConfig):
            from omegaconf import OmegaConf

            value = OmegaConf.to_container(value, resolve=True)
        if isinstance(value, Mapping):
            value = _plain_mapping(value)
        out[str(key)] = value
    return out


def _node(top: dict[str, Any], label: str) -> dict[str, Any]:
    """The ``guardrails`` node of a root config, or the config itself when it is the node."""
    if ROOT in top:
        node = top[ROOT]
        if node is None:
            return {}
        if not isinstance(node, Mapping):
            raise PolicyConfigError([(ROOT, f"expected a mapping, got {node!r}")])
        return dict(node)
    if not top or any(k in top for k in ("strict", "policy_defaults", "policies")):
        return top
    raise PolicyConfigError(
        [
            (
                ROOT,
                f"{label} has no '{ROOT}' node (its top-level keys: {', '.join(top)}); add "
                f"`defaults: [{{{ROOT}: default}}, _self_]` with `hydra.searchpath: "
                f"[pkg://guardrails.conf]`, or pass the '{ROOT}' node itself",
            )
        ]
    )


def compose(config_dir: Path, config_name: str, overrides: Sequence[str]) -> dict[str, Any]:
    """Compose ``config_dir/<config_name>.yaml`` with Hydra, applying override strings."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    with _compose_lock:
        search_path = create_config_search_path(str(config_dir.resolve()))
        # After the app's own directory (its guardrails/*.yaml win), before Hydra's schema entry.
        search_path.prepend(
            "guardrails", "pkg://guardrails.conf", anchor=SearchPathQuery(provider="schema")
        )
        loader = ConfigLoaderImpl(config_search_path=search_path)
        try:
            cfg = loader.load_configuration(
                config_name=config_name,
                overrides=list(overrides),
                run_mode=RunMode.RUN,
                from_shell=False,
            )
        except (HydraException, OmegaConfBaseException) as exc:
            raise PolicyConfigError(
                [(f"{config_dir}/{config_name}.yaml", " ".join(str(exc).split()))],
                header="cannot compose the guardrails configuration with Hydra",
            ) from None
        with open_dict(cfg):
            cfg.pop("hydra", None)
    return _to_plain(cfg)


def hydra_job() -> tuple[str, ...] | None:
    """The running Hydra job's identity (job number, id and output directory), or ``None``.

    ``configure()`` uses it to start each job of a multirun afresh. Hydra is looked up only if
    the application already imported it.
    """
    import sys

    if "hydra" not in sys.modules:
        return None
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    cfg = HydraConfig.get()
    job: Any = cfg.job  # a DictConfig at run time; `num` is missing outside a multirun
    return (str(job.get("num", "")), str(job.get("id", "")), str(cfg.runtime.output_dir))
