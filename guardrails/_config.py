"""Where configuration comes from. The only module that imports OmegaConf and Hydra.

Every source becomes a plain ``dict`` (the ``guardrails`` node, merged over the packaged
defaults) before validation, so nothing past this module ever sees a ``DictConfig``.
Composing a config directory uses Hydra's config loader directly, with its own search
path: it never initialises Hydra's global state, so it is safe from any thread and inside
a running ``@hydra.main`` app.

Before anything is resolved or merged, each source is checked for what would otherwise
crash or hang the reading (nesting past ``MAX_DEPTH``; for YAML, alias bombs) and for
YAML 1.1 booleans in disguise; values that came from interpolations (``${oc.env:...}``)
are remembered, so no problem message ever echoes them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shlex
import stat
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from guardrails import _yaml
from guardrails._errors import PolicyConfigError
from guardrails._forksafe import ForkSafeLock
from guardrails._policy import _NODE_KEYS, ROOT, Settings, build_settings, deep_merge
from guardrails._units import shown
from guardrails._yaml import MAX_DEPTH

ENV_VAR = "GUARDRAILS_CONFIG"
#: Hydra override strings for ``$GUARDRAILS_CONFIG``, space-separated (quoted as in a shell).
OVERRIDES_ENV_VAR = "GUARDRAILS_OVERRIDES"
_compose_lock = ForkSafeLock()
#: What replaces a value that came from an interpolation in a problem message.
REDACTED = "<interpolated value>"

Problem = tuple[str, str]
KeyPath = tuple[Any, ...]


@dataclass
class _Read:
    """One source, read: its top-level mapping, and what reading it found."""

    top: dict[str, Any]
    label: str
    #: YAML-level problems (disguised booleans), reported with validation's.
    problems: list[Problem] = field(default_factory=list)
    #: Values that came from interpolations, never to be shown.
    secrets: list[Any] = field(default_factory=list)


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
    read: _Read | None = None
    try:
        read = _read(source, overrides, config_name)
        try:
            settings = build_settings(deep_merge(_packaged(), _node(read)), read.label)
        except PolicyConfigError as exc:
            flagged = {path for path, _ in read.problems}
            found = [*read.problems, *(p for p in exc.problems if p[0] not in flagged)]
            raise PolicyConfigError(found) from None
        if read.problems:
            raise PolicyConfigError(read.problems)
        secrets = [*read.secrets, *_written_secrets(settings)]
        if secrets:
            # Compiling chains finds problems too (a cache key naming no parameter).
            settings = dataclasses.replace(settings, secrets=tuple(secrets))
        return settings
    except PolicyConfigError as exc:
        if read is None or not read.secrets:
            raise
        raise PolicyConfigError(redact(exc.problems, read.secrets)) from None
    except RecursionError:
        # A safety net: every source is depth-checked before it is read, so this is a
        # structure deeper than it looks (an interpolation into a deep node elsewhere).
        label = read.label if read is not None else ROOT
        raise PolicyConfigError(
            [(label, f"nested too deeply to read (keep it under {MAX_DEPTH} levels)")]
        ) from None


def env_source() -> tuple[str | None, tuple[str, ...]]:
    """``($GUARDRAILS_CONFIG or None, $GUARDRAILS_OVERRIDES split as a shell would)``.

    ``PolicyConfigError`` naming the variable when the overrides cannot be split (an
    unbalanced quote).
    """
    path = os.environ.get(ENV_VAR) or None
    text = os.environ.get(OVERRIDES_ENV_VAR, "")
    try:
        overrides = tuple(shlex.split(text))
    except ValueError as exc:
        raise PolicyConfigError(
            [(f"${OVERRIDES_ENV_VAR}", f"cannot split {text!r} into overrides: {exc}")]
        ) from None
    return path, overrides


def load_lazy_default() -> Settings:
    """What a guarded call uses when nothing was configured: ``$GUARDRAILS_CONFIG`` with
    ``$GUARDRAILS_OVERRIDES`` (overrides alone apply to the packaged defaults), or the
    packaged defaults.

    A bad configuration raises ``PolicyConfigError`` naming the variables, the source and
    every problem. It is raised again, without reading anything but the files' status, until
    the variables or the files change: then the next call reads the configuration again, so
    a fixed file heals a running process and a broken one never costs a parse per call.
    """
    try:
        path, overrides = env_source()
    except PolicyConfigError as exc:
        header = _env_header(os.environ.get(ENV_VAR) or None, (), exc)
        raise PolicyConfigError(exc.problems, header=header) from None
    source: str | Path | None = path
    if source is None and overrides:
        source = packaged_defaults_path()
    key = (path, overrides, fingerprint(source) if source is not None else ())
    failed = _lazy_failure[0]
    if failed is not None and failed[0] == key:
        # A new exception each time: raising one object again would grow its traceback.
        raise PolicyConfigError(failed[1], header=failed[2]) from None
    try:
        settings = load(source, overrides=overrides)
    except PolicyConfigError as exc:
        header = _env_header(path, overrides, exc)
        _lazy_failure[0] = (key, exc.problems, header)
        raise PolicyConfigError(exc.problems, header=header) from None
    _lazy_failure[0] = None
    return settings


#: The last failed lazy load: ``(what it read, its problems, the header)``.
_lazy_failure: list[tuple[Any, tuple[Problem, ...], str] | None] = [None]


def _env_header(path: str | None, overrides: Sequence[str], exc: PolicyConfigError) -> str:
    n = len(exc.problems)
    where = f"${ENV_VAR}={path}" if path else f"the packaged defaults (${ENV_VAR} is not set)"
    if overrides:
        where += f" with ${OVERRIDES_ENV_VAR}={shlex.join(overrides)}"
    elif os.environ.get(OVERRIDES_ENV_VAR):
        where += f" with ${OVERRIDES_ENV_VAR}={os.environ[OVERRIDES_ENV_VAR]}"
    return (
        f"invalid guardrails configuration from {where} ({n} problem{'s' if n != 1 else ''}); "
        "guarded calls fail until it is fixed"
    )


def yaml_files(source: str | os.PathLike[str]) -> list[Path]:
    """The YAML files a source is read from: the file itself, or every ``*.yaml``/``*.yml``
    under a directory (hidden files and directories skipped: editors' lock and swap files,
    Kubernetes' ``..data`` copies), sorted. Symlinks are followed, to directories too (Hydra
    composes through them: a ConfigMap mounted with a group subdirectory shows it as a symlink
    into ``..data``), each real directory once (a symlink loop ends there)."""
    root = Path(source).expanduser()
    if not root.is_dir():
        return [root]
    found: list[Path] = []
    visited: set[str] = set()
    for directory, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(directory, f)
            for f in files
            if not f.startswith(".") and f.endswith((".yaml", ".yml"))
        )
    return sorted(found)


#: A file's status as :func:`file_state` sees it.
FileState = tuple[Any, ...]


def file_state(path: Path) -> FileState:
    """``(inode, size, mtime_ns, ctime_ns)`` of a regular file (symlinks followed);
    ``("missing",)`` or ``("not a file", mode)`` otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ("missing",)
    except OSError as exc:
        return ("unreadable", exc.errno)
    if not stat.S_ISREG(st.st_mode):
        return ("not a file", stat.S_IFMT(st.st_mode))
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def fingerprint(source: str | os.PathLike[str]) -> tuple[tuple[str, FileState], ...]:
    """The status of every YAML file of a source (see :func:`yaml_files`); equal while no
    file is written, replaced, created or removed."""
    return tuple((str(p), file_state(p)) for p in yaml_files(source))


@functools.cache
def _packaged() -> dict[str, Any]:
    """The packaged defaults, read once (nothing downstream mutates the merged dicts)."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(OmegaConf.load(packaged_defaults_path()), resolve=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def _read(source: Any, overrides: Sequence[str], config_name: str) -> _Read:
    from omegaconf import DictConfig

    if isinstance(overrides, str):
        raise TypeError("overrides is a sequence of override strings, not one string")
    bad = [o for o in overrides if not isinstance(o, str)]
    if bad:
        raise TypeError(f"overrides are Hydra override strings (key=value), got {bad[0]!r}")
    if source is None:
        _no_overrides(overrides, "the packaged defaults")
        return _Read({}, "packaged defaults")
    if isinstance(source, DictConfig):
        _no_overrides(overrides, "a DictConfig")
        read = _from_config(source, "config object")
        read.problems.extend(_hydra_job_booleans())
        return read
    if isinstance(source, Mapping):
        _no_overrides(overrides, "a mapping")
        read = _Read({}, "mapping")
        read.top = _plain_mapping(source, read.secrets)
        return read
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.is_dir():
            return compose(path, config_name, overrides)
        if path.is_file():
            return _from_file(path, overrides)
        try:
            what = _not_a_file(path.stat().st_mode)
        except OSError:
            what = "no such file or directory"
        raise PolicyConfigError(
            [(str(path), f"{what} (expected a YAML file or a config directory)")]
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


@functools.cache
def _omegaconf_loader() -> type[Any]:
    """OmegaConf's own YAML loader class, so a checked file reads exactly as OmegaConf reads it."""
    from omegaconf._utils import get_yaml_loader

    loader: type[Any] = get_yaml_loader()
    return loader


def _yaml_text(path: Path | str, label: str) -> str:
    """The text of a regular file. Opened without blocking and checked once open: a file
    replaced by a FIFO after its status was looked at would block the read for ever."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise PolicyConfigError([(label, f"cannot read YAML: {_not_a_file(mode)}")])
            return f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyConfigError([(label, f"cannot read YAML: {exc}")]) from None


def _not_a_file(mode: int) -> str:
    kinds = {
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
    }
    return f"it is {kinds.get(stat.S_IFMT(mode), 'not a regular file')}, not a YAML file"


def _yaml_document(text: str, label: str) -> tuple[Any, Any]:
    """``(data, node)`` of one YAML file read as OmegaConf reads it, checked first (see
    :func:`guardrails._yaml.load`); every refusal of PyYAML's is a ``PolicyConfigError``
    naming the file, a character YAML forbids (NUL, most control characters) included."""
    try:
        return _yaml.load(text, _omegaconf_loader(), label)
    except yaml.YAMLError as exc:  # the reader refuses such characters before any check
        raise PolicyConfigError([(label, f"cannot read YAML: {exc}")]) from None


def _from_file(path: Path, overrides: Sequence[str] = ()) -> _Read:
    from omegaconf import DictConfig, OmegaConf

    label = str(path)
    data, node = _yaml_document(_yaml_text(path, label), label)
    if data is None:
        raise PolicyConfigError(
            [
                (
                    label,
                    "the file is empty (or holds only comments); write the guardrails "
                    "configuration in it (an empty file would remove every policy)",
                )
            ]
        )
    if not isinstance(data, dict):
        raise PolicyConfigError([(label, "expected a YAML mapping at the top")])
    try:
        cfg = OmegaConf.create(data)
    except Exception as exc:  # OmegaConf refuses some keys (a list as a key) and values
        raise PolicyConfigError([(label, f"cannot read YAML: {exc}")]) from None
    assert isinstance(cfg, DictConfig)
    assert node is not None  # the document held a mapping
    prefix = () if ROOT in data else (ROOT,)
    keys = _apply_file_overrides(cfg, overrides, prefix, label) if overrides else []
    read = _from_config(cfg, label)
    # The whole file is checked: every key in it is the user's guardrails configuration
    # (except what an override replaced).
    read.problems = [
        (at, message)
        for at, message in _yaml.boolean_problems(node, prefix, label)
        if not any(at == k or at.startswith(k + ".") for k in keys)
    ]
    # ... and the words that reach the guardrails node through an interpolation are reported
    # there too, where the policy reads them.
    index = {path: (label, scalar) for path, scalar in _yaml.value_scalars(node, ()).items()}
    relative = [k[len(ROOT) + 1 :] if prefix else k for k in keys]
    read.problems.extend(_interpolated_booleans(cfg, index, [f"{k}=" for k in relative]))
    read.problems = list(dict.fromkeys(read.problems))
    return read


def _apply_file_overrides(
    cfg: Any, overrides: Sequence[str], prefix: tuple[str, ...], label: str
) -> list[str]:
    """Apply Hydra override strings to the config read from one YAML file, as Hydra applies
    them to a composed config (``key=value`` changes a key that exists, ``+key=value`` adds
    one, ``++key=value`` sets either way, ``~key`` deletes); returns the keys they set, as
    paths from the root config (``guardrails.policies...``).

    Keys name the root config, as for a config directory (``guardrails.policies.f...``),
    whether the file holds that root or only its ``guardrails`` node; in a file holding only
    the node, keys without the ``guardrails.`` prefix are read from the node too.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    header = f"cannot apply the overrides to {label}"
    parser = OverridesParser.create()
    parsed = []
    problems: list[Problem] = []
    for text in overrides:
        try:
            parsed.append(parser.parse_override(text))
        except HydraException as exc:
            problems.append(
                (label, f"cannot parse the override {text!r}: {' '.join(str(exc).split())}")
            )
    if problems:
        raise PolicyConfigError(problems, header=header)
    keys: list[str] = []
    OmegaConf.set_struct(cfg, True)
    try:
        for override in parsed:
            line = override.input_line
            key = override.key_or_group
            if prefix and (key == ROOT or key.startswith(ROOT + ".")):
                key = override.key_or_group = key[len(ROOT) + 1 :]
            at = ".".join((*prefix, key)) if key else ROOT
            problem = _override_problem(override, cfg, key)
            if problem is None:
                try:
                    ConfigLoaderImpl._apply_overrides_to_config([override], cfg)
                except (HydraException, OmegaConfBaseException) as exc:
                    problem = f"{line!r}: " + " ".join(str(exc).split())
            if problem is None:
                keys.append(at)
            else:
                problems.append((at, problem))
    finally:
        OmegaConf.set_struct(cfg, False)
    if problems:
        raise PolicyConfigError(problems, header=header)
    return keys


def _override_problem(override: Any, cfg: Any, key: str) -> str | None:
    """What is wrong with an override of one file's config, before Hydra applies it."""
    from omegaconf import OmegaConf

    line = override.input_line
    if override.is_sweep_override():
        return f"{line!r} is a sweep; one configuration takes one value per key"
    if override.package is not None:
        return f"{line!r} selects a config group, and a single YAML file has none"
    if not key:
        return f"{line!r} replaces the whole '{ROOT}' node; name keys under it"
    if override.is_add() or override.is_force_add() or override.is_delete():
        return None
    if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is _ABSENT:
        return f"{line!r}: there is no such key to change; write '+{line}' to add it"
    return None


_ABSENT = object()


def _from_config(cfg: Any, label: str) -> _Read:
    """The ``guardrails`` node of a ``DictConfig`` (or the config, when it is that node),
    resolved into plain containers; the rest of the config is never touched."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    read = _Read({}, label)
    if ROOT not in cfg:
        read.top = _plain_config(cfg, (ROOT,), read.secrets)
        return read
    interpolated = cfg._get_node(ROOT)._is_interpolation()
    try:
        node = cfg[ROOT]
    except OmegaConfBaseException as exc:
        raise PolicyConfigError([(ROOT, str(exc).splitlines()[0])]) from None
    if OmegaConf.is_config(node):
        value: Any = _plain_config(node, (ROOT,), read.secrets)
    else:
        value = node
    if interpolated:
        read.secrets.extend(_leaves(value))
    read.top = {ROOT: value}
    return read


def _plain_config(cfg: Any, at: KeyPath, secrets: list[Any]) -> Any:
    """``cfg`` resolved into plain containers, after checking its depth and noting (into
    ``secrets``) the values of its interpolations."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    interpolations = _interpolations(cfg, at)
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        raise PolicyConfigError([(key, str(exc).splitlines()[0])]) from None
    for path in interpolations:
        value: Any = container
        for part in path:
            value = value[part]
        secrets.extend(_leaves(value))
    if isinstance(container, dict):
        return {str(k): v for k, v in container.items()}
    return container


def _interpolations(cfg: Any, at: KeyPath) -> list[KeyPath]:
    """The paths (relative to ``cfg``) of its interpolated nodes, found without resolving
    anything; ``PolicyConfigError`` when it nests past ``MAX_DEPTH``."""
    from omegaconf import DictConfig, ListConfig

    found: list[KeyPath] = []
    stack: list[tuple[Any, KeyPath]] = [(cfg, ())]
    while stack:
        node, path = stack.pop()
        # A container's nodes, read directly: twice as fast as keys() and _get_node().
        content = node._content
        if not isinstance(content, dict | list):
            continue  # None, missing, or an interpolation (its parent noted it)
        if len(at) + len(path) >= MAX_DEPTH:
            raise PolicyConfigError([(_dotted((*at, *path)), _too_deep())])
        for key, child in content.items() if isinstance(content, dict) else enumerate(content):
            if child._is_interpolation():
                found.append((*path, key))
            elif isinstance(child, DictConfig | ListConfig):
                stack.append((child, (*path, key)))
    return found


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep"


def _dotted(path: KeyPath) -> str:
    return ".".join(map(str, path))


def _leaves(value: Any) -> list[Any]:
    """The scalars in a resolved value (itself, when it is one)."""
    found: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            found.append(item)
    return found


def _plain_mapping(source: Mapping[Any, Any], secrets: list[Any]) -> dict[str, Any]:
    """A copy of a plain mapping as dicts and lists, refusing nesting past ``MAX_DEPTH``
    (a cycle included) before anything recursive sees it."""
    from omegaconf import OmegaConf

    top: dict[str, Any] = {}
    # Paths are where values land: under the `guardrails` node when the mapping is that node.
    at: KeyPath = () if ROOT in source else (ROOT,)
    stack: list[tuple[Any, Any, KeyPath]] = [(source, top, at)]
    while stack:
        src, dst, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            raise PolicyConfigError([(_dotted(path), _too_deep())])
        items = src.items() if isinstance(src, Mapping) else enumerate(src)
        for key, raw in items:
            where = (*path, key)
            value = _plain_config(raw, where, secrets) if OmegaConf.is_config(raw) else raw
            if isinstance(value, Mapping):
                copy: Any = {}
                stack.append((value, copy, where))
                value = copy
            elif isinstance(value, list | tuple):
                copy = [None] * len(value)
                stack.append((value, copy, where))
                value = copy
            if isinstance(dst, dict):
                dst[str(key)] = value
            else:
                dst[key] = value
    return top


def _node(read: _Read) -> dict[str, Any]:
    """The ``guardrails`` node of a root config, or the config itself when it is the node."""
    top, label = read.top, read.label
    if ROOT in top:
        node = top[ROOT]
        if node is None:
            return {}
        if not isinstance(node, Mapping):
            raise PolicyConfigError([(ROOT, f"expected a mapping, got {shown(node)}")])
        return dict(node)
    if not top or any(k in top for k in _NODE_KEYS):
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


def _written_secrets(settings: Settings) -> list[Any]:
    """Values written literally that ``show``, ``explain`` and problems must not print as
    they are: each ``cache.secret``, and each Redis URL that carries a password or user."""
    found: list[Any] = []
    for policy in (settings.policy_defaults, *settings.policies.values()):
        cache = policy.cache
        if cache is None:
            continue
        if cache.secret is not None:
            found.append(cache.secret.get_secret_value())
        if cache.url is not None and "@" in cache.url:
            found.append(cache.url)
    if settings.redis_url is not None and "@" in settings.redis_url:
        found.append(settings.redis_url)
    return list(dict.fromkeys(found))


def redact(problems: Sequence[Problem], secrets: Sequence[Any]) -> list[Problem]:
    """``problems`` with every value that came from an interpolation replaced by ``REDACTED``.

    A string is replaced wherever it appears quoted, and bare when it is long enough not to
    be an ordinary word of the message; numbers when they have four digits or more.
    """
    texts: set[str] = set()
    for value in secrets:
        if isinstance(value, str) and value:
            texts.update({repr(value), f'"{value}"'})
            if len(value) >= 4:
                texts.add(value)
            # Messages quote parts of a value too (the module of an import path).
            texts.update(p for p in re.split(r"[^\w\-]+", value) if len(p) >= 4)
        elif isinstance(value, int | float) and not isinstance(value, bool) and abs(value) >= 1000:
            texts.add(repr(value))
    ordered = sorted(texts, key=len, reverse=True)
    out = []
    for path, message in problems:
        text = message
        for secret in ordered:
            text = text.replace(secret, REDACTED)
        out.append((path, text))
    return out


def compose(config_dir: Path, config_name: str, overrides: Sequence[str]) -> _Read:
    """Compose ``config_dir/<config_name>.yaml`` with Hydra, applying override strings.

    Each YAML file Hydra reads from disk is checked first (nesting, aliases), and after
    composition the ones it used are searched for YAML 1.1 booleans that land under the
    ``guardrails`` node.
    """
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    label = f"{config_dir}/{config_name}.yaml"
    with _compose_lock:
        search_path = create_config_search_path(str(config_dir.resolve()))
        # After the app's own directory (its guardrails/*.yaml win), before Hydra's schema entry.
        search_path.prepend(
            "guardrails", "pkg://guardrails.conf", anchor=SearchPathQuery(provider="schema")
        )
        loader = _checking_loader(search_path)
        try:
            cfg = loader.load_configuration(
                config_name=config_name,
                overrides=list(overrides),
                run_mode=RunMode.RUN,
                from_shell=False,
            )
        except (HydraException, OmegaConfBaseException, yaml.YAMLError) as exc:
            raise PolicyConfigError(
                [(label, _message_of(exc))],
                header="cannot compose the guardrails configuration with Hydra",
            ) from None
        with open_dict(cfg):
            cfg.pop("hydra", None)
    read = _from_config(cfg, label)
    found = [*_booleans_in(loader), *_interpolated_booleans(cfg, _index_of(loader), overrides)]
    read.problems = list(dict.fromkeys(found))
    return read


def _message_of(exc: BaseException) -> str:
    """An exception's message on one line, with its causes': Hydra raises some (a key OmegaConf
    refuses in a file) with no message of their own, the reason being the cause's."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 8:
        seen.add(id(current))
        text = " ".join(str(current).split())
        if text and text not in parts:
            parts.append(text)
        current = current.__cause__ if parts else (current.__cause__ or current.__context__)
    return ": ".join(parts) or type(exc).__name__


def _hydra_job_booleans() -> list[Problem]:
    """YAML 1.1 booleans under ``guardrails`` in the files the running Hydra job composed.

    ``@hydra.main`` hands over a config whose YAML was read before guardrails saw it: the job's
    composition (its search path, primary config and overrides) is repeated with the checking
    loader to find which files it used, then those files are searched. Outside a Hydra job, or
    if the composition cannot be repeated, there is nothing to check.
    """
    if "hydra" not in sys.modules:
        return []
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return []
    hydra_cfg: Any = HydraConfig.get()
    search_path = ConfigSearchPathImpl()
    for entry in hydra_cfg.runtime.config_sources:
        search_path.append(entry.provider, f"{entry.schema}://{entry.path}")
    loader = _checking_loader(search_path)
    overrides = list(hydra_cfg.overrides.task)
    try:
        with _compose_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Hydra warns of sources it could not reach
            cfg = loader.load_configuration(
                config_name=hydra_cfg.job.config_name,
                overrides=overrides,
                run_mode=RunMode.RUN,
                from_shell=False,
            )
    except Exception:  # the job composed once already; a second try is only a check
        return []
    found = [*_booleans_in(loader), *_interpolated_booleans(cfg, _index_of(loader), overrides)]
    return list(dict.fromkeys(found))


def _booleans_in(loader: Any) -> list[Problem]:
    """The disguised booleans landing under ``guardrails`` in the files a composition used."""
    found: list[Problem] = []
    for path, package in loader.used:
        prefix = tuple(p for p in package.split(".") if p and p != "_global_")
        found.extend(_yaml.boolean_problems(loader.documents[path], prefix, path, only_under=ROOT))
    return found


#: A scalar of a YAML file: the file, and its node (which keeps the word and its line).
Located = tuple[str, Any]
#: An interpolation that is only a reference to another node: ``${a.b}``, ``${.b}``, ``${..b}``.
_REFERENCE = re.compile(r"\$\{(\.*)([\w-]+(?:\.[\w-]+)*)\}")
#: How many references in a row are followed (``${a}`` -> ``${b}`` -> ...).
_MAX_HOPS = 16
#: How many nodes are visited following references, at most (each may copy a subtree).
_MAX_VISITS = 100_000


def _index_of(loader: Any) -> dict[KeyPath, Located]:
    """Every scalar value of the files a composition used, by the path it lands at in the
    composed config; where files set the same path, the one merged last."""
    index: dict[KeyPath, Located] = {}
    for path, package in loader.used:
        prefix = tuple(p for p in package.split(".") if p and p != "_global_")
        for at, node in _yaml.value_scalars(loader.documents[path], prefix).items():
            index[at] = (path, node)
    return index


def _interpolated_booleans(
    cfg: Any, index: Mapping[KeyPath, Located], overrides: Sequence[str] = ()
) -> list[Problem]:
    """Disguised booleans that reach the ``guardrails`` node through node references.

    Each interpolation under the node (in ``cfg``, unresolved) that is only a reference to
    another node is followed, through chains of references and into referenced subtrees, to
    the values it lands on. A value that the files (``index``) wrote as a plain YAML 1.1
    boolean word, and that still holds what the word was read as, is reported at the
    ``guardrails`` path it reaches, naming the file, line and interpolations. A key set by an
    override string holds the override's value, not the file's.
    """
    from omegaconf import DictConfig, ListConfig

    overridden = {o.split("=", 1)[0].lstrip("~+").split("@", 1)[0] for o in overrides}
    start: KeyPath = (ROOT,) if ROOT in cfg else ()
    budget = [_MAX_VISITS]  # references followed, in all
    node = _node_at(cfg, start, budget)[0]
    if node is None:
        return []
    found: list[Problem] = []
    # (where the node is in cfg, the guardrails path it lands at, the node, references so far)
    stack: list[tuple[KeyPath, KeyPath, Any, tuple[str, ...]]] = [(start, (ROOT,), node, ())]
    visits = 0
    while stack and visits < _MAX_VISITS:
        at, shown, node, chain = stack.pop()
        visits += 1
        if node._is_interpolation():
            raw = node._value()
            target = _reference(raw, at)
            if target is None or len(chain) >= _MAX_HOPS:
                continue  # a resolver, a string with text around it, or a cycle
            referenced, where, followed = _node_at(cfg, target, budget)
            if referenced is not None:
                stack.append((where, shown, referenced, (*chain, str(raw), *followed)))
        elif isinstance(node, DictConfig | ListConfig):
            content = node._content
            if not isinstance(content, dict | list) or len(shown) >= MAX_DEPTH:
                continue
            items = content.items() if isinstance(content, dict) else enumerate(content)
            children = [((*at, k), (*shown, k), child, chain) for k, child in items]
            stack.extend(reversed(children))  # visited in the order they are written
        elif chain:
            problem = _disguised_at(at, shown, node._value(), chain, index, overridden)
            if problem is not None:
                found.append(problem)
    return found


def _disguised_at(
    at: KeyPath,
    shown: KeyPath,
    value: Any,
    chain: tuple[str, ...],
    index: Mapping[KeyPath, Located],
    overridden: set[str],
) -> Problem | None:
    """The problem of the value at ``at`` reaching ``shown`` through ``chain``, if a file
    wrote it as a boolean word."""
    located = index.get(tuple(map(str, at)))
    if located is None or not isinstance(value, bool) or _dotted(at) in overridden:
        return None
    where, scalar = located
    meant = _yaml.disguised(scalar)
    if meant is None or value is not (meant == "true"):
        return None  # written as true/false, or set since (a later merge, an override)
    line = f"{where}, line {scalar.start_mark.line + 1}, at {_dotted(at)}"
    message = _yaml.boolean_message(scalar.value, meant, line, through=chain)
    return _dotted(shown), message


def _reference(raw: Any, at: KeyPath) -> KeyPath | None:
    """The path an interpolation at ``at`` refers to, when it is only a node reference."""
    match = _REFERENCE.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        return None
    dots, dotted = match.groups()
    parts = tuple(dotted.split("."))
    if not dots:
        return parts
    # `.b` is a sibling (in the same parent); each further dot goes one level up.
    parent = at[:-1]
    up = len(dots) - 1
    if up > len(parent):
        return None
    return (*parent[: len(parent) - up], *parts)


def _node_at(
    cfg: Any, path: KeyPath, budget: list[int], depth: int = 0
) -> tuple[Any, KeyPath, tuple[str, ...]]:
    """``(node, where, references)``: the unresolved node ``path`` names in ``cfg``, where it
    really is, and the references followed on the way (a container written as a reference,
    ``cache: ${shared.cache}``, stands for the node it names); ``(None, (), ())`` when there
    is none, or when following would take more than ``budget[0]`` more references (or
    references nested more than ``_MAX_HOPS`` deep)."""
    node: Any = cfg
    where: KeyPath = ()
    followed: tuple[str, ...] = ()
    for part in path:
        while node._is_interpolation():
            raw = node._value()
            target = _reference(raw, where)
            budget[0] -= 1
            if target is None or budget[0] < 0 or depth >= _MAX_HOPS:
                return None, (), ()
            node, where, more = _node_at(cfg, target, budget, depth + 1)
            if node is None:
                return None, (), ()
            followed = (*followed, str(raw), *more)
        content = getattr(node, "_content", None)
        if isinstance(content, dict):
            node = content.get(part, content.get(str(part)))
        elif isinstance(content, list):
            index = int(part) if isinstance(part, int) or str(part).isdigit() else -1
            node = content[index] if 0 <= index < len(content) else None
        else:
            return None, (), ()  # a value, None or missing: no node under it
        if node is None:
            return None, (), ()
        where = (*where, part)
    return node, where, followed


def _checking_loader(search_path: Any) -> Any:
    """A Hydra ``ConfigLoaderImpl`` that checks each file before Hydra parses it and records
    the files (and the packages they land at) a composition used."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.core_plugins.file_config_source import FileConfigSource
    from hydra.core.object_type import ObjectType
    from hydra.plugins.config_source import ConfigSource

    documents: dict[str, Any] = {}

    class CheckingRepository(ConfigRepository):
        def load_config(self, config_path: str) -> Any:
            source = self._find_object_source(config_path, ObjectType.CONFIG)
            if isinstance(source, FileConfigSource):
                path = _file_of(source.path, config_path, ConfigSource)
                if path not in documents:
                    # Read whole, as Hydra is about to: what its loader would raise raw (a
                    # duplicate key, an unknown tag, a scalar document) is a problem here.
                    data, documents[path] = _yaml_document(_yaml_text(path, path), path)
                    if data is not None and not isinstance(data, dict | list):
                        raise PolicyConfigError([(path, "expected a YAML mapping at the top")])
            return super().load_config(config_path)

    class CheckingLoader(ConfigLoaderImpl):
        def __init__(self, config_search_path: Any) -> None:
            super().__init__(config_search_path=config_search_path)
            self.repository = CheckingRepository(config_search_path)
            self.documents = documents
            #: ``(file, package)`` of each file in the composition, in order.
            self.used: list[tuple[str, str]] = []

        def _load_single_config(self, default: Any, repo: Any) -> Any:
            result = super()._load_single_config(default, repo)
            if str(result.path).startswith("file://") and default.config_path is not None:
                path = _file_of(result.path[len("file://") :], default.config_path, ConfigSource)
                if documents.get(path) is not None:
                    self.used.append((path, default.package or ""))
            return result

    return CheckingLoader(search_path)


def _file_of(directory: str, config_path: str, config_source: Any) -> str:
    name = config_source._normalize_file_name(filename=config_path)
    return os.path.realpath(os.path.join(directory, name))


def hydra_job() -> tuple[str, ...] | None:
    """The running Hydra job's identity (job number, id and output directory), or ``None``.

    ``configure()`` uses it to start each job of a multirun afresh. Hydra is looked up only if
    the application already imported it.
    """
    if "hydra" not in sys.modules:
        return None
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    cfg = HydraConfig.get()
    job: Any = cfg.job  # a DictConfig at run time, whatever the schema's type says
    return (str(job.get("num", "")), str(job.get("id", "")), str(cfg.runtime.output_dir))
