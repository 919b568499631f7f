"""What a policy runs, layer by layer, and where each value came from (``guardrails explain``).

Validation turns ``80%`` into bytes and ``250ms`` into seconds; this module goes back to the
raw, unvalidated layers of the configuration to show each setting as it was written, and
who wrote it. It re-reads the source (the packaged defaults; the source's ``guardrails``
node composed without the value overrides; the same node with every override), then walks
the merge the way ``_policy`` does: a policy over its ``base`` chain over ``policy_defaults``
(the source's over the packaged ones); mappings merge key by key, anything else replaces.

Used by the command line only: nothing here is on the call path.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrails import _config
from guardrails._chain import ORDER
from guardrails._errors import PolicyConfigError
from guardrails._policy import ROOT, Policy, Settings, deep_merge

#: Where a value came from, in the order the merge applies them (the last one wins).
KINDS = ("default", "packaged", "policy_defaults", "base", "policy", "override")
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Origin:
    """Who wrote a value: ``kind`` (one of ``KINDS``) and ``where`` (the dotted key it was
    written at, or the override string; empty for a built-in default)."""

    kind: str
    where: str

    def label(self) -> str:
        if self.kind == "default":
            return "built-in default"
        if self.kind == "packaged":
            return "packaged default"
        if self.kind == "override":
            return f"override {self.where}" if self.where else "override"
        if self.kind == "base":
            # guardrails.policies.<base>.<...>: name the base policy.
            return f"base {self.where.split('.')[2]}"
        if self.kind == "policy":
            return f"policy {self.where.split('.')[2]}"
        return "policy_defaults"


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting of a layer: its key inside the block, its value as written, an optional
    note on what it resolves to here, and its origin."""

    key: str
    value: Any
    resolved: str | None
    origin: Origin


@dataclass(frozen=True, slots=True)
class LayerView:
    name: str
    per: str
    settings: tuple[Setting, ...]


@dataclass(frozen=True, slots=True)
class Off:
    """A block that is written somewhere in the policy's merge but is not in the chain."""

    block: str
    why: str
    origin: Origin | None


@dataclass(frozen=True, slots=True)
class Explained:
    policy: str
    source: str
    overrides: tuple[str, ...]
    strict: bool
    inherits: tuple[str, ...]
    layers: tuple[LayerView, ...]
    off: tuple[Off, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "source": self.source,
            "overrides": list(self.overrides),
            "strict": self.strict,
            "inherits": list(self.inherits),
            "layers": [
                {
                    "layer": layer.name,
                    "per": layer.per,
                    "settings": [_setting_json(s) for s in layer.settings],
                }
                for layer in self.layers
            ],
            "off": [
                {
                    "block": off.block,
                    "why": off.why,
                    **(_origin_json(off.origin) if off.origin else {"source": None, "where": None}),
                }
                for off in self.off
            ],
        }


def _origin_json(origin: Origin) -> dict[str, Any]:
    return {"source": origin.kind, "where": origin.where or None}


def _setting_json(setting: Setting) -> dict[str, Any]:
    return {
        "key": setting.key,
        "value": setting.value,
        "resolved": setting.resolved,
        **_origin_json(setting.origin),
    }


@dataclass(frozen=True, slots=True)
class Raw:
    """The raw layers of one configuration, and the validated settings they make."""

    settings: Settings
    packaged: Mapping[str, Any]
    #: The source's ``guardrails`` node without the value overrides (``guardrails.*=...``).
    written: Mapping[str, Any]
    #: The source's ``guardrails`` node with every override.
    final: Mapping[str, Any]
    overrides: tuple[str, ...]
    #: The source is the packaged defaults file itself (overrides on no source).
    is_packaged: bool = False


def is_value_override(override: str) -> bool:
    """Whether a Hydra override string sets a key under the ``guardrails`` node (rather than
    choosing a config group, such as ``guardrails=production``)."""
    return _override_key(override).startswith(f"{ROOT}.")


def _override_key(override: str) -> str:
    key = override.split("=", 1)[0].strip().lstrip("~+")
    return key.split("@", 1)[0]


def read(source: Any, overrides: Sequence[str] = (), config_name: str = "config") -> Raw:
    """Validate ``source`` (``PolicyConfigError`` as ``configure()`` would raise it) and read
    its raw layers."""
    settings = _config.load(source, overrides=overrides, config_name=config_name)
    packaged = _config._packaged()
    if source is None:
        return Raw(settings, packaged, {}, {}, ())
    path = Path(source).expanduser()
    if path.is_dir():
        final = _config._node(_config.compose(path, config_name, overrides))
        choices = [o for o in overrides if not is_value_override(o)]
        written = final
        if len(choices) != len(overrides):
            try:
                written = _config._node(_config.compose(path, config_name, choices))
            except PolicyConfigError:
                written = final  # the overrides are needed to compose at all
        return Raw(settings, packaged, written, final, tuple(overrides))
    # A file has no config groups: every override sets a value.
    final = _config._node(_config._from_file(path, overrides))
    written = _config._node(_config._from_file(path)) if overrides else final
    is_packaged = path.resolve() == _config.packaged_defaults_path().resolve()
    return Raw(settings, packaged, written, final, tuple(overrides), is_packaged)


def close_names(name: str, names: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when a name in ``names`` is close to ``name``, else ``""``."""
    near = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def unknown_policy(name: str, settings: Settings) -> PolicyConfigError:
    """The error for a policy name the configuration does not define."""
    names = sorted(settings.policies)
    known = f"; its policies: {', '.join(names)}" if names else "; it defines no policies"
    fallback = (
        f"strict is true, so a function guarded with {name!r} fails on its first call"
        if settings.strict
        else f"a function guarded with {name!r} runs policy_defaults"
    )
    return PolicyConfigError(
        [
            (
                f"{ROOT}.policies.{name}",
                f"no policy named {name!r}{close_names(name, names)} in {settings.source}"
                f"{known}; {fallback}",
            )
        ]
    )


class _Merge:
    """The merge of one policy's raw layers, with who wrote what."""

    def __init__(self, raw: Raw, name: str | None) -> None:
        self.raw = raw
        policies = _mapping(raw.final.get("policies"))
        # The sources of the merge, most derived first: (kind, dotted prefix, raw mapping,
        # the node path it sits at in the source's node, or None for the packaged file).
        self.chain: list[tuple[str, str, Mapping[str, Any], tuple[str, ...] | None]] = []
        self.inherits: list[str] = []
        current = name
        seen: set[str] = set()
        while current is not None and current not in seen:
            seen.add(current)
            body = _mapping(policies.get(current))
            kind = "policy" if current == name else "base"
            if kind == "base":
                self.inherits.append(current)
            prefix = f"{ROOT}.policies.{current}"
            self.chain.append((kind, prefix, body, ("policies", current)))
            base = body.get("base")
            current = base if isinstance(base, str) else None
        defaults = _mapping(raw.final.get("policy_defaults"))
        self.chain.append(
            ("policy_defaults", f"{ROOT}.policy_defaults", defaults, ("policy_defaults",))
        )
        packaged = _mapping(raw.packaged.get("policy_defaults"))
        self.chain.append(("packaged", f"{ROOT}.policy_defaults", packaged, None))
        merged: dict[str, Any] = {}
        for _, _, body, _ in reversed(self.chain):
            merged = deep_merge(merged, body)
        merged.pop("base", None)
        self.merged = merged

    def origin(self, path: tuple[str, ...]) -> Origin | None:
        """Who wrote the value at ``path`` (a key path inside the policy), if anybody did."""
        for kind, prefix, body, at in self.chain:
            if not _writes(body, path):
                continue
            where = ".".join([prefix, *path])
            if at is not None:
                node_path = (*at, *path)
                now = _get(self.raw.final, node_path)
                before = _get(self.raw.written, node_path)
                if before is _MISSING or before != now:
                    return Origin("override", _override_for(where, self.raw.overrides))
            packaged = kind == "policy_defaults" and self.raw.is_packaged
            return Origin("packaged" if packaged else kind, where)
        return None


def _override_for(where: str, overrides: Sequence[str]) -> str:
    """The last override string that sets ``where`` or a mapping holding it."""
    found = ""
    for override in overrides:
        key = _override_key(override)
        for full in (key, f"{ROOT}.{key}"):  # a file's keys may leave out `guardrails.`
            if where == full or where.startswith(full + "."):
                found = override.strip()
    return found


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _writes(raw: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    return _get(raw, path) is not _MISSING


def _get(raw: Any, path: Sequence[str]) -> Any:
    node = raw
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return _MISSING
        node = node[key]
    return node


def merged(raw: Raw, name: str | None) -> dict[str, Any]:
    """Policy ``name``'s raw mapping (``None``: ``policy_defaults``) after inheritance."""
    return _Merge(raw, name).merged


def merged_all(raw: Raw, names: Sequence[str]) -> dict[str | None, dict[str, Any]]:
    """:func:`merged` of each of ``names`` and of ``policy_defaults`` (key ``None``), each
    policy merged once over its base's result: linear in the policies, where calling
    :func:`merged` for each walks every base chain again (1,500 chained policies: 12 s)."""
    policies = _mapping(raw.final.get("policies"))
    packaged = _mapping(raw.packaged.get("policy_defaults"))
    defaults = deep_merge(packaged, _mapping(raw.final.get("policy_defaults")))
    defaults.pop("base", None)
    found: dict[str | None, dict[str, Any]] = {None: defaults}
    for name in names:
        chain: list[str] = []  # name and its bases not merged yet, most derived first
        current: Any = name
        while isinstance(current, str) and current not in found and current not in chain:
            chain.append(current)
            current = _mapping(policies.get(current)).get("base")
        for member in reversed(chain):
            body = _mapping(policies.get(member))
            base = body.get("base")
            under = found.get(base, defaults) if isinstance(base, str) else defaults
            result = deep_merge(under, body)
            result.pop("base", None)
            found[member] = result
    return found


# --- values as written --------------------------------------------------------------------


def written(model: Any, raw: Any, secrets: Sequence[Any] = ()) -> Any:
    """``model`` dumped to plain data, each value replaced by what was written for it where
    something was (``80%``, ``250ms``): what ``guardrails show`` prints."""
    dumped = model.model_dump(mode="json", exclude_none=True)
    return _overlay(dumped, raw, secrets)


def standalone(
    model: Any, raw: Any, under: Mapping[str, Any], secrets: Sequence[Any] = ()
) -> dict[str, Any]:
    """What ``guardrails show`` prints for a policy (or ``policy_defaults``): its values as
    written (see :func:`written`), complete, so that the output configured again gives the
    same settings. ``under`` is what it is merged over when read back: its base as shown
    (over the shown ``policy_defaults`` over the packaged ones); the packaged
    ``policy_defaults`` for ``policy_defaults``.

    A block or setting the policy removed (``cache: null`` under a base that has one) is
    written ``null`` wherever ``under`` would otherwise bring it back.
    """
    shown: dict[str, Any] = written(model, raw, secrets)
    _write_nulls(shown, model.model_dump(mode="json"), under)
    return shown


def _write_nulls(shown: dict[str, Any], full: Mapping[str, Any], under: Any) -> None:
    for key, value in full.items():
        below = under.get(key) if isinstance(under, Mapping) and key != "base" else None
        if below is None:
            continue
        if value is None:
            shown[key] = None
        elif isinstance(value, Mapping) and isinstance(shown.get(key), dict):
            _write_nulls(shown[key], value, below)


def _overlay(dumped: Any, raw: Any, secrets: Sequence[Any]) -> Any:
    if isinstance(dumped, dict) and isinstance(raw, Mapping):
        return {k: _overlay(v, raw.get(k, _MISSING), secrets) for k, v in dumped.items()}
    if raw is _MISSING:
        return dumped
    return _hide(raw, secrets)


def _hide(value: Any, secrets: Sequence[Any]) -> Any:
    """``value``, with what came from an interpolation replaced (never shown)."""
    if not secrets:
        return value
    if isinstance(value, Mapping):
        return {k: _hide(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hide(v, secrets) for v in value]
    if any(value == s and type(value) is type(s) for s in secrets):
        return _config.REDACTED
    return value


def _leaves(dumped: Any, raw: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any, Any]]:
    """``(path, as written or dumped, dumped)`` of each leaf of a block: mappings are walked
    where both the model and the raw value are mappings; lists are leaves."""
    if isinstance(dumped, dict) and dumped and (raw is _MISSING or isinstance(raw, Mapping)):
        found = []
        for key, value in dumped.items():
            sub = raw.get(key, _MISSING) if isinstance(raw, Mapping) else _MISSING
            found.extend(_leaves(value, sub, (*path, key)))
        return found
    return [(path, dumped if raw is _MISSING else raw, dumped)]


# --- the chain ----------------------------------------------------------------------------

#: For a block that feeds two layers, the fields each layer reads (``enabled`` goes with
#: the first).
_FIELDS: dict[str, tuple[str, ...]] = {
    "validate.input": ("enabled", "input", "args"),
    "validate.output": ("output",),
    "timeout.total": ("enabled", "total"),
    "timeout.attempt": ("attempt",),
}


def _built(layer: str, block: Any) -> str | None:
    """``None`` when the layer is in the chain for an enabled ``block``, else why not (the
    same tests the builders make)."""
    if layer == "validate.input" and block.input is None and not block.args:
        return "no input model and no args checks"
    if layer == "validate.output" and block.output is None:
        return "no output type"
    if layer == "timeout.total" and block.total is None:
        return "no total"
    if layer == "timeout.attempt" and block.attempt is None:
        return "no attempt"
    if layer == "fallback" and not block.catch:
        return "catch is empty"
    if layer == "retry" and (block.max_attempts <= 1 or not block.retry_on):
        return "max_attempts is 1" if block.max_attempts <= 1 else "retry_on is empty"
    if layer == "chaos":
        latency = block.latency > 0 and block.latency_rate > 0
        if not latency and block.error_rate <= 0:
            return "nothing to inject (error_rate 0, no latency)"
    return None


def explain(raw: Raw, name: str | None) -> Explained:
    """The chain of policy ``name`` (``None``: ``policy_defaults``), outermost first.

    ``PolicyConfigError`` when ``name`` is not a policy of the configuration.
    """
    settings = raw.settings
    if name is None:
        policy = settings.policy_defaults
    elif name in settings.policies:
        policy = settings.policies[name]
    else:
        raise unknown_policy(name, settings)
    merge = _Merge(raw, name)
    layers: list[LayerView] = []
    off: list[Off] = []
    log = policy.log
    if log is not None:
        log_note = None if log.enabled else "enabled: false: no records; counters still kept"
        layers.append(
            LayerView("log", "call", _settings(merge, policy, "log", None, settings, log_note))
        )
    disabled: set[str] = set()
    for layer in ORDER:
        block = getattr(policy, layer.block)
        if block is None:
            continue
        if not block.enabled:
            if layer.block not in disabled:
                disabled.add(layer.block)
                origin = merge.origin((layer.block, "enabled"))
                off.append(Off(layer.block, "enabled: false", origin))
            continue
        why = _built(layer.name, block)
        if why is not None:
            if layer.name not in _FIELDS:  # half of a block that the other half uses: no news
                off.append(Off(layer.name, why, None))
            continue
        fields = _FIELDS.get(layer.name)
        views = _settings(merge, policy, layer.block, fields, settings)
        layers.append(LayerView(layer.name, layer.per, views))
    # Blocks that some layer of the merge wrote as null: removed, and by whom.
    for block_name in Policy.model_fields:
        if block_name == "base" or getattr(policy, block_name) is not None:
            continue
        if _writes(merge.merged, (block_name,)):
            off.append(Off(block_name, "null", merge.origin((block_name,))))
    return Explained(
        policy=name if name is not None else "policy_defaults",
        source=settings.source,
        overrides=raw.overrides,
        strict=settings.strict,
        inherits=tuple(merge.inherits),
        layers=tuple(layers),
        off=tuple(off),
    )


def _settings(
    merge: _Merge,
    policy: Policy,
    block_name: str,
    fields: tuple[str, ...] | None,
    settings: Settings,
    note: str | None = None,
) -> tuple[Setting, ...]:
    block = getattr(policy, block_name)
    dumped = block.model_dump(mode="json", exclude_none=True)
    raw = merge.merged.get(block_name, _MISSING)
    found: list[Setting] = []
    for path, value, resolved in _leaves(dumped, raw, ()):
        if fields is not None and path[0] not in fields:
            continue
        full = (block_name, *path)
        origin = merge.origin(full) or Origin("default", "")
        if path == ("enabled",) and origin.kind == "default":
            continue  # an on layer is enabled; say so only when somebody wrote it
        found.append(
            Setting(
                ".".join(path),
                _hide(value, settings.secrets),
                note if path == ("enabled",) else _resolved(value, resolved),
                origin,
            )
        )
    return tuple(found)


def _resolved(written_value: Any, resolved: Any) -> str | None:
    """A note for a size written as a percentage: what it is on this machine."""
    if (
        isinstance(written_value, str)
        and written_value.strip().endswith("%")
        and isinstance(resolved, int)
        and not isinstance(resolved, bool)
        and resolved > 100
    ):
        return f"{_size(resolved)} here"
    return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


# --- text ---------------------------------------------------------------------------------


def flow(value: Any) -> str:
    """``value`` as one line of YAML (flow style), as it would be written in a policy."""
    import yaml

    text: str = yaml.safe_dump(
        value, default_flow_style=True, width=10**9, allow_unicode=True, sort_keys=False
    )
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _grouped(written: list[tuple[str, Any, str, str]]) -> list[tuple[str, str]]:
    """One line per setting, ``key: value (resolved)``; neighbours under one parent key
    that came from the same place share a line, as YAML would write them:
    ``args.features.columns.alcohol: {dtype: float64, min: 0}``."""
    lines: list[tuple[str, str]] = []
    i = 0
    while i < len(written):
        key, value, resolved, origin = written[i]
        parent = key.rpartition(".")[0]
        j = i + 1
        if parent and not resolved:
            while j < len(written):
                other, _, _ = written[j][0].rpartition(".")
                if other != parent or written[j][2] or written[j][3] != origin:
                    break
                j += 1
        if j - i > 1:
            members = {k.rpartition(".")[2]: v for k, v, _, _ in written[i:j]}
            lines.append((f"{parent}: {flow(members)}", origin))
        else:
            text = f"{key}: {flow(value)}" + (f" ({resolved})" if resolved else "")
            lines.append((text, origin))
        i = j
    return lines


def render(explained: Explained) -> str:
    """The text ``guardrails explain`` prints."""
    head = explained.source
    if explained.overrides:
        head += " with " + " ".join(explained.overrides)
    lines = [f"policy {explained.policy}: {head}"]
    if explained.inherits:
        lines.append(f"inherits: {' -> '.join(explained.inherits)} -> policy_defaults")
    lines.append("chain, outermost first (per attempt: inside retry):")
    rows: list[tuple[str, str, str]] = []
    for index, layer in enumerate(explained.layers, 1):
        rows.append((f"{index:>2}. {layer.name}", f"per {layer.per}", ""))
        defaults: list[str] = []
        written: list[tuple[str, Any, str, str]] = []  # key, value, resolved, origin
        for s in layer.settings:
            if s.origin.kind == "default":
                # A check nobody wrote checks nothing: not worth a word (args, output).
                if s.key.partition(".")[0] not in ("args", "output"):
                    defaults.append(f"{s.key}={flow(s.value)}")
            else:
                written.append((s.key, s.value, s.resolved or "", s.origin.label()))
        rows.extend((f"      {text}", origin, "") for text, origin in _grouped(written))
        if defaults:
            rows.append((f"      built-in defaults: {', '.join(defaults)}", "", ""))
    width = min(max((len(r[0]) for r in rows if r[1]), default=0), 60)
    for left, right, _ in rows:
        lines.append(f"{left:<{width}}  {right}".rstrip() if right else left)
    if not explained.layers:
        lines.append("    (no layers)")
    for off in explained.off:
        by = f"; {off.origin.label()}" if off.origin else ""
        lines.append(f"off: {off.block} ({off.why}{by})")
    return "\n".join(lines) + "\n"
