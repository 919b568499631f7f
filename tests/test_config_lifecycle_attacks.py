"""Attacks on the configuration lifecycle: watch(), $GUARDRAILS_CONFIG and the Hydra callback.

Each test here failed before the fix it came with (or pins an attack that held). Nothing sleeps
hoping for timing: waits are bounded polls on an observable condition.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from guardrails import PolicyConfigError, configure, guarded, policy, stats, watch
from guardrails._config import _yaml_text, file_state, fingerprint, yaml_files
from guardrails._state import STATE
from guardrails._watch import Watcher, _digest

FAST = 0.01
_REPO = Path(__file__).resolve().parents[1]


def wait_for(condition: Callable[[], object], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def looks_after(watcher: Watcher, n: int = 3) -> None:
    start = watcher._looks
    wait_for(lambda: watcher._looks >= start + n, f"{n} looks")


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("guardrails-watch")]


@pytest.fixture
def running() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for w in started:
        w.stop()
    assert watch_threads() == []


def ttl() -> float:
    cache = policy("p").cache
    assert cache is not None
    return cache.ttl


# --- Kubernetes: a ConfigMap volume with a group subdirectory ----------------------------


def _config_map_version(root: Path, name: str, ttl: int) -> None:
    """One ``..<timestamp>`` directory as the kubelet writes it for a ConfigMap whose items
    include a path in a subdirectory (``guardrails/default.yaml``)."""
    version = root / name
    (version / "guardrails").mkdir(parents=True)
    (version / "config.yaml").write_text(
        "defaults:\n  - guardrails: default\n  - _self_\n"
        "hydra:\n  searchpath: [pkg://guardrails.conf]\n"
    )
    (version / "guardrails" / "default.yaml").write_text(
        f"policies:\n  p:\n    cache: {{ttl: {ttl}}}\n"
    )


def _kubelet_swap(root: Path, name: str) -> None:
    (root / "..data_tmp").symlink_to(name)
    os.replace(root / "..data_tmp", root / "..data")


def test_a_config_map_with_a_group_subdirectory_is_reloaded_on_its_swap(
    tmp_path: Path, running: list[Watcher]
) -> None:
    """The kubelet shows each top-level entry as a symlink into ``..data``: the group
    directory ``guardrails`` is a symlink to a directory. Not descending it, the watcher saw
    only ``config.yaml`` (the same bytes in every version) and never reloaded."""
    root = tmp_path / "config"
    root.mkdir()
    _config_map_version(root, "..2024_01", ttl=10)
    (root / "..data").symlink_to("..2024_01")
    (root / "config.yaml").symlink_to("..data/config.yaml")
    (root / "guardrails").symlink_to("..data/guardrails")
    w = watch(root, interval=FAST)
    running.append(w)
    assert ttl() == 10
    _config_map_version(root, "..2024_02", ttl=20)
    _kubelet_swap(root, "..2024_02")
    # The new chain is in force a moment before the watcher counts the reload.
    wait_for(lambda: ttl() == 20 and w.reloads == 1, "the swapped ConfigMap's group file")
    assert (w.reloads, w.failures) == (1, 0)


def test_yaml_files_follow_directory_symlinks_once_and_survive_a_loop(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "group").mkdir(parents=True)
    (conf / "config.yaml").write_text("{}\n")
    (conf / "group" / "a.yaml").write_text("{}\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "b.yaml").write_text("{}\n")
    (conf / "linked").symlink_to(shared)
    (conf / "group" / "loop").symlink_to("..")  # back to conf: a cycle
    (conf / "again").symlink_to("group")  # the same directory under a second name
    found = yaml_files(conf)
    assert sorted(os.path.realpath(p) for p in found) == sorted(
        os.path.realpath(p)
        for p in (conf / "config.yaml", conf / "group" / "a.yaml", shared / "b.yaml")
    )
    # The env config's fingerprint sees an edit behind the symlink too.
    before = fingerprint(conf)
    (shared / "b.yaml").write_text("{x: 1}\n")
    assert fingerprint(conf) != before


# --- arguments -----------------------------------------------------------------------------


def test_an_interval_too_long_for_a_thread_wait_is_refused(
    tmp_path: Path, running: list[Watcher]
) -> None:
    """``Event.wait`` raises OverflowError above ``threading.TIMEOUT_MAX``: the thread died
    at its first wait, leaving a watcher that never looked (and a traceback on stderr)."""
    path = tmp_path / "g.yaml"
    path.write_text("policies:\n  p:\n    cache: {ttl: 1}\n")
    with pytest.raises(ValueError, match="at most"):
        watch(path, interval=threading.TIMEOUT_MAX * 2)
    assert watch_threads() == []
    # The longest interval a wait takes is accepted, and the watcher runs (and stops).
    w = watch(path, interval=threading.TIMEOUT_MAX)
    running.append(w)
    wait_for(lambda: w.running, "the thread")


# --- stop() from a signal handler --------------------------------------------------------

_SIGNAL_SCRIPT = """
import os, signal, sys, threading, time
from pathlib import Path
from guardrails import PolicyConfigError, configure, guarded, policy, stats, watch
from guardrails._state import STATE

path = Path(sys.argv[1])
w = watch(path, interval=0.01)
signal.signal(signal.SIGUSR1, lambda *_: w.stop())

def waiting_for_the_lock():
    # Its innermost frame: a guardrails lock's __enter__ (blocked in acquire), called by
    # configure() of a reload.
    frame = sys._current_frames().get(w._thread.ident)
    return (
        frame is not None
        and frame.f_code.co_name == "__enter__"
        and frame.f_code.co_filename.endswith("_forksafe.py")
        and frame.f_back is not None
        and frame.f_back.f_code.co_name == "configure"
    )

# The main thread is inside configure() (holding the state lock) when SIGTERM-like shutdown
# arrives, while the watcher thread waits for that lock to install a reload.
with STATE.lock:
    tmp = path.with_name("tmp.yaml")
    tmp.write_text("policies:\\n  p:\\n    cache: {ttl: 3}\\n")
    os.replace(tmp, path)
    deadline = time.monotonic() + 30
    while not waiting_for_the_lock():
        assert time.monotonic() < deadline, "the reload never waited for the lock"
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGUSR1)
    print("stop returned", flush=True)
w._thread.join(30)
assert not w._thread.is_alive(), "the thread outlived the lock"
assert not w.running
print("thread ended", policy("p").cache.ttl, flush=True)
"""


def test_stop_from_a_signal_handler_that_interrupted_configure_does_not_deadlock(
    tmp_path: Path,
) -> None:
    """A handler calling ``stop()`` runs on the main thread, which may hold the state lock
    (inside ``configure()``): joining a watcher that waits for that lock hung for ever."""
    path = tmp_path / "g.yaml"
    path.write_text("policies:\n  p:\n    cache: {ttl: 2}\n")
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(_SIGNAL_SCRIPT))
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=90,
            cwd=_REPO,
            env={**os.environ, "PYTHONPATH": str(_REPO)},
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"stop() from the signal handler hung: {exc.stdout!r}") from None
    assert done.returncode == 0, done.stderr
    # The reload in progress finished after the lock was released; the thread then ended.
    assert done.stdout.splitlines() == ["stop returned", "thread ended 3.0"]


# --- hostile YAML: every refusal is a PolicyConfigError naming the file ------------------

HOSTILE = {
    "a python tag": "policies: !!python/object/apply:os.system ['echo pwned']\n",
    "an unknown tag": "policies: !foo {}\n",
    "a duplicate key": "policies: {}\npolicies: {p: {}}\n",
    "a list as a key": "policies:\n  ? [a, b]\n  : {}\n",
    "a NUL character": "policies: {}\n\x00\n",
    "a control character": "policies: {p: {}}\x07\n",
    "a scalar document": "42\n",
}


def _group_dir(root: Path, text: str) -> Path:
    conf = root / "conf"
    (conf / "guardrails").mkdir(parents=True)
    (conf / "config.yaml").write_text("defaults:\n  - guardrails: g\n  - _self_\n")
    (conf / "guardrails" / "g.yaml").write_text(text)
    return conf


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_hostile_yaml_in_a_file_or_a_group_file_is_a_policy_config_error(
    tmp_path: Path, what: str
) -> None:
    """A config directory handed these to Hydra's loader unchecked: ``configure()`` raised
    PyYAML's ConstructorError/ReaderError or Hydra's OSError, naming nothing, and the lazy
    default re-read the files on every call. A NUL broke the single-file path too."""
    path = tmp_path / "g.yaml"
    path.write_text(HOSTILE[what])
    conf = _group_dir(tmp_path, HOSTILE[what])
    for source, named in ((path, path), (conf, conf / "guardrails" / "g.yaml")):
        with pytest.raises(PolicyConfigError) as caught:
            configure(source)
        assert [p for p, _ in caught.value.problems] == [str(named)], what
        assert STATE.settings is None  # nothing was installed


def test_a_key_omegaconf_refuses_in_a_group_file_says_why(tmp_path: Path) -> None:
    """Hydra raises it as a ConfigCompositionException with no message: the problem read
    ``config.yaml: `` and nothing else."""
    conf = _group_dir(tmp_path, "policies:\n  null: {}\n")
    with pytest.raises(PolicyConfigError, match="Incompatible key type 'NoneType'"):
        configure(conf)


def test_a_hostile_env_config_fails_each_call_naming_the_variable_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = _group_dir(tmp_path, HOSTILE["a duplicate key"])
    monkeypatch.setenv("GUARDRAILS_CONFIG", str(conf))
    monkeypatch.delenv("GUARDRAILS_OVERRIDES", raising=False)

    @guarded("p")
    def f() -> int:
        return 1

    for _ in range(2):
        with pytest.raises(PolicyConfigError) as caught:
            f()
        message = str(caught.value)
        assert "$GUARDRAILS_CONFIG=" in message and "duplicate key" in message
        assert str(conf / "guardrails" / "g.yaml") in message
    (conf / "guardrails" / "g.yaml").write_text("policies: {p: {cache: {ttl: 7}}}\n")
    assert f() == 1 and ttl() == 7  # fixed on disk: healed without a restart


def test_a_watched_group_file_given_a_duplicate_key_keeps_the_config_and_names_the_file(
    tmp_path: Path, running: list[Watcher], logs: pytest.LogCaptureFixture
) -> None:
    conf = _group_dir(tmp_path, "policies: {p: {cache: {ttl: 1}}}\n")
    w = watch(conf, interval=FAST)
    running.append(w)
    group = conf / "guardrails" / "g.yaml"
    tmp = group.with_name(".tmp")
    tmp.write_text("policies: {p: {cache: {ttl: 2}}}\npolicies: {}\n")
    os.replace(tmp, group)
    wait_for(lambda: w.failures == 1, "the refused edit")
    assert isinstance(w.last_error, PolicyConfigError)
    assert w.last_error.problems[0][0] == str(group)
    assert ttl() == 1
    errors = [r for r in logs.records if r.levelno == logging.ERROR]
    assert errors and all(r.exc_info is None for r in errors)  # every problem, no traceback


# --- a file that becomes a FIFO between its status and its read ---------------------------


def test_a_file_replaced_by_a_fifo_after_its_status_was_taken_never_blocks(
    tmp_path: Path,
) -> None:
    """The watcher stats a file, then reads it: a FIFO put there in between blocked the read
    (and the watcher, and ``stop()`` joining it) until some writer opened the FIFO. The same
    for a group file Hydra found as a regular file."""
    path = tmp_path / "g.yaml"
    path.write_text("policies: {}\n")
    state = file_state(path)
    path.unlink()
    os.mkfifo(path)
    result: list[object] = []
    reader = threading.Thread(
        target=lambda: result.extend([_digest(path, state), _read_error(path)]), daemon=True
    )
    reader.start()
    reader.join(30)
    if reader.is_alive():
        with open(path, "w"):  # the writer that unblocks it, so no thread is left behind
            pass
        reader.join(30)
        raise AssertionError("reading a FIFO blocked")
    assert result[0] == ("not a file", stat.S_IFIFO)
    assert result[1] == [(str(path), "cannot read YAML: it is a FIFO, not a YAML file")]


def _read_error(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(PolicyConfigError) as caught:
        _yaml_text(path, str(path))
    return list(caught.value.problems)


def test_an_env_config_that_is_a_fifo_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "no such file or directory" of a path that exists."""
    path = tmp_path / "g.yaml"
    os.mkfifo(path)
    with pytest.raises(PolicyConfigError, match="it is a FIFO, not a YAML file"):
        configure(path)


# --- the watching thread ending on its own --------------------------------------------------


def test_sys_exit_in_on_reload_is_logged_as_the_end_of_watching(
    tmp_path: Path, running: list[Watcher], logs: pytest.LogCaptureFixture
) -> None:
    """``sys.exit()`` in a thread ends the thread alone, and threading says nothing of a
    SystemExit: the watcher stopped reloading without a word while the process went on."""
    path = tmp_path / "g.yaml"
    path.write_text("policies: {p: {cache: {ttl: 1}}}\n")

    def restart(settings: object) -> None:
        sys.exit(3)  # "restart on a config change", as if this were the main thread

    w = watch(path, interval=FAST, on_reload=restart)
    running.append(w)
    tmp = tmp_path / "tmp.yaml"
    tmp.write_text("policies: {p: {cache: {ttl: 2}}}\n")
    os.replace(tmp, path)
    wait_for(lambda: not w.running, "the thread to end")
    ended = [r for r in logs.records if "ended: SystemExit" in r.getMessage()]
    assert len(ended) == 1 and ended[0].levelno == logging.ERROR
    assert ended[0].exc_info is not None and isinstance(ended[0].exc_info[1], SystemExit)
    # The watcher is not running, so another may start.
    w2 = watch(path, interval=FAST)
    running.append(w2)
    assert w2.running


# --- the Hydra callback's report --------------------------------------------------------------


def test_the_job_report_counts_its_policies_in_english(logs: pytest.LogCaptureFixture) -> None:
    from hydra.core.utils import JobReturn, JobStatus

    from guardrails.hydra import _log_report

    configure({"policies": {"p": {}}})

    @guarded("p")
    def f() -> int:
        return 1

    f()
    done = JobReturn()
    done.status = JobStatus.COMPLETED
    _log_report(stats(), done, None)
    assert "the job finished with 1 policy in use" in logs.records[-2].getMessage()
