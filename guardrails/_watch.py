"""Live reload: ``watch()`` polls a YAML file or a config directory and reconfigures on change.

A daemon thread looks at the source every ``interval`` seconds: the status of each YAML file
(inode, size, modification and change times; a file whose status changed, or changed in the
last two seconds, is read and hashed). When the content changed, it calls ``configure()``
with the source and overrides. ``configure()`` is atomic: a call sees the old chain or the
new one, never a mix, and a configuration that fails validation changes nothing. A failed
reload is logged at ERROR on the ``guardrails`` logger with every problem; the last good
configuration stays in force and the next change is tried again.

Only YAML files under the directory are watched: a composition that reads files elsewhere
(another search path entry) is not reloaded when those change. The thread does not exist in
a child made by ``fork``: the child's watcher reports itself stopped; call ``watch()`` in the
child to watch there.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from guardrails import _forksafe
from guardrails._config import file_state, yaml_files
from guardrails._core import configure
from guardrails._errors import PolicyConfigError
from guardrails._forksafe import ForkSafeLock
from guardrails._policy import Settings
from guardrails.layers.log import LOGGER

__all__ = ["Watcher", "reload_counts", "watch"]

#: A file whose status changed less than this long ago is read again at each look: a write of
#: the same size within the file system's timestamp granularity leaves its status unchanged.
_FRESH_NS = 2_000_000_000
#: A file larger than this is not hashed (its status alone tells a change).
_MAX_HASHED = 64 * 1024 * 1024

_lock = ForkSafeLock()
_totals = [0, 0]  # reloads, failed reloads: every watcher of the process
_running: list[Watcher] = []


def reload_counts() -> tuple[int, int]:
    """``(reloads, failed reloads)`` by every watcher of this process since it started."""
    with _lock:
        return _totals[0], _totals[1]


class Watcher:
    """A running ``watch()``: ``stop()`` it (or use it as a context manager).

    ``reloads`` and ``failures`` count the reloads applied and failed since it started (the
    configuration at start is neither); ``last_error`` is the exception of the last reload
    when it failed, ``None`` once a reload succeeds again.
    """

    def __init__(
        self,
        source: Path,
        overrides: tuple[str, ...],
        interval: float,
        config_name: str,
        on_reload: Callable[[Settings], object] | None,
    ) -> None:
        self.source = source
        self.overrides = overrides
        self.interval = interval
        self.config_name = config_name
        self.on_reload = on_reload
        self.reloads = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        #: The settings of the last configuration this watcher installed.
        self.settings: Settings | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set by the thread as it ends (on a stop, or on an error that is not an Exception).
        self._ended = False
        self._pid = os.getpid()
        #: path -> (status, digest) of the files as last looked at.
        self._seen: dict[str, tuple[tuple[Any, ...], Any]] = {}
        self._content: tuple[tuple[str, Any], ...] = ()
        #: How many looks the thread has finished (tests wait on it).
        self._looks = 0

    # -- the public handle -----------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the watching thread is alive (never in a forked child)."""
        thread = self._thread
        return (
            os.getpid() == self._pid
            and thread is not None
            and thread.is_alive()
            and not self._stopping.is_set()
        )

    def _active(self) -> bool:
        """Started or starting, and not stopped (a thread that ended on its own is not)."""
        return not self._stopping.is_set() and not self._ended

    def stop(self) -> None:
        """Stop watching and join the thread; idempotent. From the watcher's own thread (an
        ``on_reload`` callback, a log handler), or from a thread holding one of guardrails'
        locks (a signal handler that interrupted ``configure()``), it returns at once and the
        thread ends as soon as the reload in progress returns: joining there could wait for
        ever on a reload waiting for that lock."""
        if os.getpid() != self._pid:
            return  # a forked child: the thread was the parent's (and _running was cleared)
        # No lock taken here (a signal handler may run while this thread holds it): watch()
        # forgets stopped watchers itself.
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and not _holding():
            thread.join()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<guardrails.Watcher {str(self.source)!r} {state}, every {self.interval:g} s, "
            f"{self.reloads} reloads, {self.failures} failed>"
        )

    # -- the thread ------------------------------------------------------------------------

    def _start(self) -> None:
        # What the files hold is taken before the first configure: an edit made while it
        # reads them is seen at the first look.
        self._content = self._look()
        self.settings = configure(
            self.source, overrides=self.overrides, config_name=self.config_name
        )
        self._thread = threading.Thread(
            target=self._run, name=f"guardrails-watch {self.source}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping.wait(self.interval):
                try:
                    self._poll()
                except Exception:  # a bug here must not end the watching silently
                    LOGGER.exception("guardrails: watching %s failed; still watching", self.source)
                self._looks += 1
        except BaseException as exc:
            # sys.exit() in on_reload ends this thread only, and silently (threading ignores
            # SystemExit): say that the watching ended, and why (logged here, with its
            # traceback, rather than raised again to threading's hook).
            LOGGER.error(
                "guardrails: watching %s ended: %s raised on the watching thread; no more "
                "reloads (the process goes on)",
                self.source,
                type(exc).__name__,
                exc_info=exc,
            )
        finally:
            self._ended = True

    def _poll(self) -> None:
        content = self._look()
        if content == self._content or self._stopping.is_set():
            return
        before = dict(self._content)
        self._content = content
        # Hydra composes an empty file as an empty config: a group file caught empty while an
        # editor saves it would remove its policies. A file that held something and is now
        # empty is refused (one empty from the start is composed as it is).
        emptied = [
            path
            for path, digest in content
            if _blank(digest) and path in before and not _blank(before[path])
        ]
        if emptied and self.source.is_dir():
            self._failed(
                PolicyConfigError(
                    [
                        (
                            path,
                            "the file became empty (an editor saving it?); write `{}` in it "
                            "to mean an empty config",
                        )
                        for path in emptied
                    ]
                )
            )
            return
        try:
            settings = configure(
                self.source, overrides=self.overrides, config_name=self.config_name
            )
        except Exception as exc:  # a PolicyConfigError, or anything else configure raised
            self._failed(exc)
            return
        self.settings = settings
        self.reloads += 1
        self.last_error = None
        with _lock:
            _totals[0] += 1
        LOGGER.info(
            "guardrails: configuration reloaded from %s (%d polic%s)",
            self.source,
            len(settings.policies),
            "y" if len(settings.policies) == 1 else "ies",
        )
        if self.on_reload is not None:
            try:
                self.on_reload(settings)
            except Exception:
                LOGGER.exception("guardrails: the on_reload callback of watch() raised")

    def _failed(self, exc: Exception) -> None:
        # Logged, then counted: whoever sees the count (a test, /healthz) finds the record.
        self.last_error = exc
        if isinstance(exc, PolicyConfigError):
            LOGGER.error(
                "guardrails: reloading %s failed; the configuration in force is unchanged\n%s",
                self.source,
                exc,
                extra={"problems": list(exc.problems)},
            )
        else:
            LOGGER.error(
                "guardrails: reloading %s failed; the configuration in force is unchanged",
                self.source,
                exc_info=exc,
            )
        self.failures += 1
        with _lock:
            _totals[1] += 1

    def _look(self) -> tuple[tuple[str, Any], ...]:
        """What the YAML files of the source hold: per file, a digest of its bytes (or its
        status when it is missing, not a regular file, unreadable or very large)."""
        now = time.time_ns()
        seen: dict[str, tuple[tuple[Any, ...], Any]] = {}
        for path in yaml_files(self.source):
            key = str(path)
            state = file_state(path)
            before = self._seen.get(key)
            if len(state) < 4 or state[1] > _MAX_HASHED:
                digest: Any = state
            elif before is not None and before[0] == state and now - state[2] > _FRESH_NS:
                digest = before[1]
            else:
                digest = _digest(path, state)
            seen[key] = (state, digest)
        self._seen = seen
        return tuple((key, digest) for key, (_, digest) in seen.items())


def _holding() -> bool:
    """Whether this thread holds a lock of guardrails (every one is a ``ForkSafeLock``; each
    keeps, per thread, the locks its open ``with`` blocks took)."""
    return any(getattr(lock._entered, "locks", None) for lock in list(_forksafe._ALL))


def _digest(path: Path, state: tuple[Any, ...]) -> Any:
    """``(hash of the bytes, whether they hold no YAML)``, or a status when unreadable."""
    try:
        # Not blocking, and checked once open: the file may have become a FIFO since its
        # status was taken, and reading that would block the watcher for ever.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                return ("not a file", stat.S_IFMT(mode))
            data = f.read(_MAX_HASHED + 1)
    except OSError as exc:
        return ("unreadable", exc.errno, state)
    blank = all(not line.strip() or line.lstrip().startswith(b"#") for line in data.splitlines())
    return (hashlib.blake2b(data, digest_size=16).digest(), blank)


def _blank(digest: Any) -> bool:
    return isinstance(digest, tuple) and len(digest) == 2 and digest[1] is True


def watch(
    source: str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    interval: float = 1.0,
    config_name: str = "config",
    on_reload: Callable[[Settings], object] | None = None,
) -> Watcher:
    """Configure from ``source`` now, then reload it whenever its YAML changes.

    ``source`` is a YAML file or a Hydra config directory (composed from
    ``<config_name>.yaml`` with ``overrides``, as ``configure()`` does). The first
    configuration is applied before this returns and a bad one raises ``PolicyConfigError``
    (no thread is started). Then a daemon thread looks every ``interval`` seconds; a change
    is applied with ``configure()``, and a bad one is logged at ERROR with every problem while
    the configuration in force stays. ``on_reload(settings)`` runs on the watching thread
    after each reload applied.

    One watcher runs at a time in a process (two would undo each other's reloads):
    ``RuntimeError`` while another runs. ``configure()`` called by hand meanwhile lasts until
    the next change to the watched files.
    """
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            "watch() watches a YAML file or a config directory (a path), got "
            f"{type(source).__name__}; pass a mapping or config object to configure() instead"
        )
    if isinstance(overrides, str):
        raise TypeError("overrides is a sequence of override strings, not one string")
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not math.isfinite(interval)
        or interval <= 0
        or interval > threading.TIMEOUT_MAX
    ):
        # Above TIMEOUT_MAX, the thread's wait would raise OverflowError and end it.
        raise ValueError(
            f"interval is a number of seconds above 0 and at most {threading.TIMEOUT_MAX:g}, "
            f"got {interval!r}"
        )
    if on_reload is not None and not callable(on_reload):
        raise TypeError(f"on_reload is a function taking the new settings, got {on_reload!r}")
    path = Path(source).expanduser().absolute()  # not resolved: a swapped symlink is followed
    watcher = Watcher(path, tuple(overrides), float(interval), config_name, on_reload)
    with _lock:
        for other in list(_running):
            if not other._active():
                _running.remove(other)
        if _running:
            raise RuntimeError(
                f"a watcher of {_running[0].source} is running; stop() it before watching "
                f"{path} (two watchers would undo each other's reloads)"
            )
        _running.append(watcher)
    try:
        watcher._start()
    except BaseException:
        with _lock:
            _running.remove(watcher)
        raise
    return watcher


def _after_fork_in_child() -> None:
    # The watching thread is the parent's: in the child no watcher runs.
    _running.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
