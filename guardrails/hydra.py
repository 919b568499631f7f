"""The Hydra job lifecycle: ``GuardrailsCallback`` for ``hydra.callbacks``.

List it in the application's config and the app needs no ``configure()`` call::

    hydra:
      callbacks:
        guardrails:
          _target_: guardrails.hydra.GuardrailsCallback
          stats_file: guardrails_stats.json   # null: write no file
          log_report: true                    # one INFO line per policy at job end

At the start of each job (a single run, or each job of a multirun, in this process or in a
launcher's worker process) the callback configures guardrails from the job's config: the
policies as composed with the job's overrides. A job that is not the first one this process
runs starts afresh (empty caches, zeroed statistics, new breakers, rate-limit buckets, retry
budgets and chaos dice), so its figures are those of the job run alone. At the end of the job,
failed or not, it writes the job's statistics as JSON into the job's output directory and
logs them on the ``guardrails`` logger.

``import guardrails`` does not import this module (it imports Hydra): only an app's config
names it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from guardrails._core import configure, stats
from guardrails._errors import PolicyConfigError
from guardrails._stats import PolicyStats

LOGGER = logging.getLogger("guardrails")

#: ``PolicyStats`` fields shown in the log line of a policy whenever they are not zero.
_SHOWN_IF_SET = (
    ("slow", "slow"),
    ("fallbacks", "fallbacks"),
    ("timeouts", "timeouts"),
    ("abandoned", "abandoned"),
    ("short_circuited", "short-circuited"),
    ("rate_limited", "rate-limited"),
    ("bulkhead_rejected", "bulkhead-full"),
    ("injected", "injected"),
)


class GuardrailsCallback(Callback):
    """Configure guardrails at the start of each Hydra job; write and log its statistics at
    the end.

    ``stats_file``: the file name (or a path relative to the job's output directory) the
    statistics are written to, as ``{"<policy>": {<PolicyStats fields>}}``; ``None`` writes
    no file. ``log_report``: log one INFO line per policy on the ``guardrails`` logger.
    """

    def __init__(
        self, stats_file: str | None = "guardrails_stats.json", log_report: bool = True
    ) -> None:
        if stats_file is not None and (not isinstance(stats_file, str) or not stats_file):
            raise TypeError(
                "GuardrailsCallback: stats_file is a file name (a non-empty string), or null "
                f"to write no file; got {stats_file!r}"
            )
        if not isinstance(log_report, bool):
            raise TypeError(f"GuardrailsCallback: log_report is true or false, got {log_report!r}")
        self.stats_file = stats_file
        self.log_report = log_report

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            configure(config)
        except Exception as exc:
            # Hydra turns an Exception raised by a callback into a warning (shown once per
            # process) and runs the task anyway, here without the job's policies.
            what = str(exc) if isinstance(exc, PolicyConfigError) else repr(exc)
            LOGGER.error("guardrails: the job stops before its task runs: %s", what)
            raise JobConfigurationError(
                f"guardrails: the job's configuration is invalid; the job did not run.\n{what}"
            ) from exc

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        snapshot = stats()
        written: Path | None = None
        if self.stats_file is not None:
            path = Path(str(HydraConfig.get().runtime.output_dir)) / self.stats_file
            try:
                written = write_stats(path, snapshot)
            except OSError:
                # Hydra would only warn (once per process): the job's own outcome stands.
                LOGGER.exception("guardrails: cannot write the job's statistics to %s", path)
                raise
        if self.log_report:
            _log_report(snapshot, job_return, written)


class JobConfigurationError(SystemExit):
    """The job's guardrails configuration is invalid: the job stops before its task runs.

    A ``SystemExit`` (with the message as its code) because Hydra catches every ``Exception``
    a callback raises and runs the job anyway; uncaught, it ends the process with status 1
    and the message on standard error. ``__cause__`` is the ``PolicyConfigError``.
    """


def write_stats(path: Path, snapshot: dict[str, PolicyStats]) -> Path:
    """Write ``{"<policy>": {<PolicyStats fields>}}`` to ``path`` atomically (a temporary file
    in the same directory, renamed over it): a reader sees the old file or the whole new one."""
    text = json.dumps(
        {name: s.as_dict() for name, s in snapshot.items()}, indent=2, allow_nan=False
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # Not mkstemp: its file is private (0600); this one gets the mode the umask gives.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the error being raised says what went wrong
            os.unlink(temporary)
        raise
    return path


def _log_report(
    snapshot: dict[str, PolicyStats], job_return: JobReturn, written: Path | None
) -> None:
    status = job_return.status
    outcome = "failed" if status == JobStatus.FAILED else "finished"
    where = f"; written to {written}" if written is not None else ""
    n = len(snapshot)
    LOGGER.info(
        "guardrails: the job %s with %d polic%s in use%s",
        outcome,
        n,
        "y" if n == 1 else "ies",
        where,
    )
    for name, s in snapshot.items():
        LOGGER.info("guardrails: %s", policy_line(name, s))


def policy_line(name: str, s: PolicyStats) -> str:
    """One policy's statistics on one line: the counts, then the fail-fast counts that are
    not zero, the percentiles and the breaker's state."""
    parts = [
        f"calls={s.calls}",
        f"ok={s.successes}",
        f"failed={s.failures}",
        f"retries={s.retries}",
        f"hits={s.cache_hits}",
        f"misses={s.cache_misses}",
        f"rejected={s.rejected}",
    ]
    parts += [f"{label}={getattr(s, field)}" for field, label in _SHOWN_IF_SET if getattr(s, field)]
    if s.p50_ms is not None and s.p95_ms is not None and s.p99_ms is not None:
        parts.append(f"p50={s.p50_ms:.2f}ms p95={s.p95_ms:.2f}ms p99={s.p99_ms:.2f}ms")
    if s.breaker_state is not None:
        parts.append(f"breaker={s.breaker_state}")
    return f"{name}: " + " ".join(parts)
