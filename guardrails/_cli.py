"""The ``guardrails`` command: check a configuration before it ships, and show policies.

guardrails check conf guardrails=production          # exit 1 and list every problem
guardrails show conf guardrails=production --policy predict
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from guardrails._config import load
from guardrails._errors import PolicyConfigError
from guardrails._policy import Policy, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guardrails",
        description="Validate guardrails policies, or show them after merging and inheritance.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("check", "validate a configuration; exit 1 listing every problem"),
        ("show", "print the effective policies as YAML"),
    ]:
        cmd = commands.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "source",
            nargs="?",
            help="a YAML file or a Hydra config directory (default: the packaged defaults)",
        )
        cmd.add_argument("overrides", nargs="*", help="Hydra override strings (directory only)")
        cmd.add_argument("--config-name", default="config", help="primary config of a directory")
        if name == "show":
            cmd.add_argument("--policy", action="append", help="only this policy (repeatable)")
    return parser


def _policy_yaml(policy: Policy) -> dict[str, object]:
    return policy.model_dump(mode="json", exclude_none=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``guardrails`` console script."""
    args = _parser().parse_args(argv)
    # Import paths in policies resolve from the current directory, as under `python -m`.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        settings: Settings = load(
            args.source, overrides=args.overrides, config_name=args.config_name
        )
    except PolicyConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except TypeError as exc:
        sys.stderr.write(f"guardrails: {exc}\n")
        return 2
    if args.command == "check":
        n = len(settings.policies)
        sys.stdout.write(
            f"ok: {settings.source}: {n} polic{'y' if n == 1 else 'ies'}, "
            f"strict={str(settings.strict).lower()}"
            f"{', allow_chaos=true (faults will be injected)' if settings.allow_chaos else ''}\n"
        )
        return 0
    from omegaconf import OmegaConf

    names = args.policy or sorted(settings.policies)
    try:
        # A name with no policy gets policy_defaults, or (strict) a PolicyConfigError.
        policies = {name: _policy_yaml(settings.policy(name)) for name in names}
    except PolicyConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    shown: dict[str, Any] = {
        "strict": settings.strict,
        **({"allow_chaos": True} if settings.allow_chaos else {}),
        "policy_defaults": _policy_yaml(settings.policy_defaults),
        "policies": policies,
    }
    sys.stdout.write(OmegaConf.to_yaml({"guardrails": shown}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
