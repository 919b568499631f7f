"""The ``guardrails`` command: check a configuration before it ships, show and explain policies.

guardrails check conf guardrails=production --import examples.pipeline
guardrails show conf guardrails=production --policy predict
guardrails explain predict conf guardrails=production
guardrails check conf --format json

Without a SOURCE, ``$GUARDRAILS_CONFIG`` (with ``$GUARDRAILS_OVERRIDES``) is read, as a guarded
call would read it; without that either, the packaged defaults. Exit status: 0 ok (warnings
allowed), 1 a problem in the configuration or the code, 2 a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from guardrails import _explain
from guardrails._config import env_source, packaged_defaults_path
from guardrails._errors import PolicyConfigError
from guardrails._policy import ROOT, Settings, deep_merge
from guardrails._redis import redis_url_shown

Problem = tuple[str, str]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guardrails",
        description=(
            "Validate guardrails policies, show them as written after merging and "
            "inheritance, or explain one policy's chain. Without SOURCE: $GUARDRAILS_CONFIG "
            "(with $GUARDRAILS_OVERRIDES), else the packaged defaults."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("check", "validate a configuration (and the code that uses it); exit 1 listing problems"),
        ("show", "print the effective policies as YAML, values as written"),
        ("explain", "print one policy's chain, outermost first, and where each value came from"),
    ]:
        cmd = commands.add_parser(name, help=text, description=text)
        if name == "explain":
            cmd.add_argument("name", help="the policy name (as in @guarded(NAME))")
        cmd.add_argument(
            "source",
            nargs="?",
            help="a YAML file or a Hydra config directory (default: $GUARDRAILS_CONFIG, else "
            "the packaged defaults)",
        )
        cmd.add_argument("overrides", nargs="*", help="Hydra override strings (directory only)")
        cmd.add_argument("--config-name", default="config", help="primary config of a directory")
        cmd.add_argument("--format", choices=("text", "json"), default="text", help="output format")
        if name == "show":
            cmd.add_argument("--policy", action="append", help="only this policy (repeatable)")
        if name == "check":
            cmd.add_argument(
                "--import",
                dest="modules",
                action="append",
                default=[],
                metavar="MODULE[,MODULE...]",
                help="import these modules and check their guarded functions against the "
                "configuration (repeatable; one value each, so overrides may follow)",
            )
    return parser


def _source(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """The source and overrides to read: the arguments, else the environment's (overrides
    alone apply to the packaged defaults, as for a guarded call)."""
    source, overrides = args.source, list(args.overrides)
    if source is not None and "=" in source and not Path(source).exists():
        # `guardrails explain predict guardrails.x=1`: overrides on the environment's source.
        source, overrides = None, [source, *overrides]
    if source is None:
        source, from_env = env_source()
        overrides = [*from_env, *overrides]
        if source is None and overrides:
            source = str(packaged_defaults_path())
    return source, overrides


@dataclass
class _Report:
    """What `check` found."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    functions: list[dict[str, Any]] = field(default_factory=list)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``guardrails`` console script."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Positionals after an option (`check conf --import app key=value`) come back unparsed.
    for item in extra:
        if item.startswith("-"):
            parser.error(f"unrecognized arguments: {item}")
        if args.source is None:
            args.source = item
        else:
            args.overrides.append(item)
    # Import paths in policies resolve from the current directory, as under `python -m`.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    out = _Output(args.format)
    report = _Report()
    try:
        source, overrides = _source(args)
    except PolicyConfigError as exc:
        return out.failed(exc.problems, exc, report)
    modules = [m.strip() for value in getattr(args, "modules", ()) for m in value.split(",")]
    if args.command == "check":
        _import_modules([m for m in modules if m], report)
    try:
        raw = _explain.read(source, overrides, args.config_name)
    except PolicyConfigError as exc:
        return out.failed([*report.problems, *exc.problems], exc, report)
    except TypeError as exc:
        sys.stderr.write(f"guardrails: {exc}\n")
        return 2
    settings = raw.settings
    if args.command == "check":
        if modules:
            _check_functions(settings, report)
        if report.problems:
            return out.failed(report.problems, None, report, settings)
        return out.checked(settings, report, bool(modules))
    if args.command == "explain":
        try:
            explained = _explain.explain(raw, args.name)
        except PolicyConfigError as exc:
            return out.failed(exc.problems, exc, report, settings)
        out.write(_explain.render(explained), {"ok": True, **explained.as_json()})
        return 0
    return _show(raw, args.policy, out)


def _show(raw: _explain.Raw, wanted: list[str] | None, out: _Output) -> int:
    settings = raw.settings
    names = wanted or sorted(settings.policies)
    unknown = [n for n in dict.fromkeys(names) if n not in settings.policies]
    if unknown:
        problems = [p for n in unknown for p in _explain.unknown_policy(n, settings).problems]
        return out.failed(problems, None, _Report(), settings)
    secrets = settings.secrets
    # Complete policies, removed blocks written as null, so that the output configured
    # again gives the same settings: each is read back over its base as shown.
    packaged = raw.packaged.get("policy_defaults") or {}
    merged = _explain.merged_all(raw, names)
    defaults = _explain.standalone(settings.policy_defaults, merged[None], packaged, secrets)
    read_back: dict[str | None, dict[str, Any]] = {None: deep_merge(packaged, defaults)}
    bodies: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        chain: list[str] = []  # name and the bases not shown yet, most derived first
        current: str | None = name
        while current is not None and current not in read_back and current not in chain:
            chain.append(current)
            current = settings.policies[current].base
        for member in reversed(chain):
            base = settings.policies[member].base
            under = read_back.get(base, read_back[None])
            body = _explain.standalone(settings.policies[member], merged[member], under, secrets)
            read_back[member] = deep_merge(under, body)
            bodies[member] = body
    policies = {name: bodies[name] for name in dict.fromkeys(names)}
    shown: dict[str, Any] = {
        "strict": settings.strict,
        **({"allow_chaos": True} if settings.allow_chaos else {}),
        **({"redis_url": redis_url_shown(settings.redis_url)} if settings.redis_url else {}),
        "policy_defaults": defaults,
        "policies": policies,
    }
    out.write(
        yaml.safe_dump({ROOT: shown}, sort_keys=False, allow_unicode=True, width=10**9),
        {"ok": True, "source": settings.source, "overrides": list(raw.overrides), ROOT: shown},
    )
    return 0


def _import_modules(modules: Sequence[str], report: _Report) -> None:
    """Import the application's modules (registering their guarded functions); a module that
    fails to import is a problem. What they print goes to stderr, not into the output."""
    for module in dict.fromkeys(modules):
        try:
            with _stdout_to_stderr():
                importlib.import_module(module)
        except (Exception, SystemExit) as exc:
            frames = [
                f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")
            ][1:]  # not this module's frame, nor importlib's
            # The application's line (a @guarded that refuses its function), not ours.
            frames = [f for f in frames if not _is_ours(f.filename)] or frames
            at = f" (at {frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
            report.problems.append(
                (f"--import {module}", f"cannot import: {type(exc).__name__}: {exc}{at}")
            )


_PACKAGE = str(Path(__file__).resolve().parent)


def _is_ours(filename: str) -> bool:
    return str(Path(filename).resolve()).startswith(_PACKAGE + os.sep)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """What the imported modules print goes to stderr, the output (JSON) stays clean: at
    the file descriptor too, for C extensions and ``os.write(1, ...)`` (an ML library's
    banner), not only ``sys.stdout``."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no descriptor 1 or 2 (a closed stdout): sys.stdout alone
        saved = -1
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved >= 0:
            _flush_c_stdio()  # printf() output still in the C library's buffer
            os.dup2(saved, 1)
            os.close(saved)


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to ask (not POSIX)
        pass


def _check_functions(settings: Settings, report: _Report) -> None:
    """Every registered guarded function against ``settings``: each needs a policy, and its
    chain must compile (a cache key or a validate check naming no parameter); every policy
    should be used by some function."""
    from guardrails._core import SLOTS, unused_policies
    from guardrails._state import STATE

    with STATE.lock:
        slots = sorted(SLOTS, key=lambda s: (s.qualname, s.name))
        for slot in slots:
            has = slot.name in settings.policies
            report.functions.append(
                {
                    "function": slot.qualname,
                    "policy": slot.name,
                    "async": slot.is_async,
                    "has_policy": has,
                }
            )
            if not has:
                hint = _explain.close_names(slot.name, list(settings.policies))
                runs = (
                    "strict is true, so its first call fails"
                    if settings.strict
                    else "it would run policy_defaults"
                )
                report.problems.append(
                    (
                        f"{ROOT}.policies.{slot.name}",
                        f"no policy named {slot.name!r} for guarded function {slot.qualname}"
                        f"{hint} in {settings.source}; {runs}: add the policy (an empty "
                        "mapping takes policy_defaults)",
                    )
                )
                continue
            try:
                slot.compile(settings, {})
            except PolicyConfigError as exc:
                report.problems.extend(exc.problems)
    used = {slot.name for slot in slots}
    for name, near in unused_policies(settings, used):
        hint = f" (did you mean {near!r}?)" if near else ""
        where = (f"{ROOT}.policies.{name}", f"no guarded function uses policy {name!r}{hint}")
        if settings.strict:
            report.problems.append((where[0], where[1] + "; strict is true"))
        else:
            report.warnings.append(where)
    report.problems = list(dict.fromkeys(report.problems))


class _Output:
    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"

    def write(self, text: str, data: Any) -> None:
        if self.json:
            sys.stdout.write(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")
        else:
            sys.stdout.write(text)

    def failed(
        self,
        problems: Sequence[Problem],
        error: PolicyConfigError | None,
        report: _Report,
        settings: Settings | None = None,
    ) -> int:
        problems = list(dict.fromkeys(problems))
        if self.json:
            self.write("", {"ok": False, **_about(settings), **_report_json(problems, report)})
            return 1
        for key, message in report.warnings:
            sys.stderr.write(f"warning: {key}: {message}\n")
        if error is not None and list(error.problems) == problems:
            sys.stderr.write(f"{error}\n")  # its own header (a Hydra composition error)
        else:
            sys.stderr.write(f"{PolicyConfigError(problems)}\n")
        return 1

    def checked(self, settings: Settings, report: _Report, imported: bool) -> int:
        n = len(settings.policies)
        text = (
            f"ok: {settings.source}: {n} polic{'y' if n == 1 else 'ies'}, "
            f"strict={str(settings.strict).lower()}"
            f"{', allow_chaos=true (faults will be injected)' if settings.allow_chaos else ''}"
        )
        if imported:
            f = len(report.functions)
            text += f"; {f} guarded function{'' if f == 1 else 's'}, each with a policy"
        if not self.json:
            for key, message in report.warnings:
                sys.stderr.write(f"warning: {key}: {message}\n")
        self.write(
            text + "\n",
            {"ok": True, **_about(settings), **_report_json([], report)},
        )
        return 0


def _json_safe(value: Any) -> Any:
    """``value`` as strict JSON can hold it: a float that is not finite as YAML writes it
    (``.nan``, ``.inf``, ``-.inf``; ``json.dumps`` would print ``NaN``, which JSON parsers
    refuse), mapping keys as strings, anything else JSON has no type for as its ``str``."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _about(settings: Settings | None) -> dict[str, Any]:
    """The configuration's facts in JSON output (``null`` when it could not be read)."""
    return {
        "source": settings.source if settings else None,
        "strict": settings.strict if settings else None,
        "allow_chaos": settings.allow_chaos if settings else None,
        "policies": sorted(settings.policies) if settings else None,
    }


def _report_json(problems: Sequence[Problem], report: _Report) -> dict[str, Any]:
    return {
        "functions": report.functions,
        "problems": [{"key": k, "message": m} for k, m in problems],
        "warnings": [{"key": k, "message": m} for k, m in report.warnings],
    }


if __name__ == "__main__":
    raise SystemExit(main())
