"""guardrails.watch(): live reload of a YAML file or a config directory, on a real thread.

Nothing here sleeps hoping for timing: each test waits (bounded) for an observable condition
(the watcher's counters, the number of looks it finished, the policy in force).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import guardrails
from guardrails import PolicyConfigError, guarded, policy, watch
from guardrails._watch import Watcher, reload_counts
from tests.twins import reap

FAST = 0.01  # seconds between looks in most tests


def wait_for(condition: Callable[[], object], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def looks_after(watcher: Watcher, n: int = 3) -> None:
    """Wait until the watcher has finished ``n`` more looks (so it saw what is on disk)."""
    start = watcher._looks
    wait_for(lambda: watcher._looks >= start + n, f"{n} looks")


def retry_yaml(n: int, extra: str = "") -> str:
    return f"policies:\n  p:\n    retry: {{max_attempts: {n}}}\n{extra}"


def attempts() -> int:
    found = policy("p").retry
    assert found is not None
    return found.max_attempts


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("guardrails-watch")]


@pytest.fixture
def running() -> Iterator[list[Watcher]]:
    """Watchers a test starts are stopped after it, whatever happens."""
    started: list[Watcher] = []
    yield started
    for w in started:
        w.stop()
    assert watch_threads() == []


@pytest.fixture
def conf_file(tmp_path: Path) -> Path:
    path = tmp_path / "guardrails.yaml"
    path.write_text(retry_yaml(2))
    return path


def start(running: list[Watcher], *args: Any, **kwargs: Any) -> Watcher:
    w = watch(*args, **kwargs)
    running.append(w)
    return w


def replace_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- the basics ---------------------------------------------------------------------------


def test_an_edit_is_in_force_within_seconds_with_the_default_interval(
    conf_file: Path, running: list[Watcher]
) -> None:
    w = start(running, conf_file)
    assert attempts() == 2  # configured at start
    assert w.running and len(watch_threads()) == 1
    replace_atomically(conf_file, retry_yaml(3))  # (write_text may be seen half done: empty)
    # The new chain is in force a moment before the watcher counts the reload.
    wait_for(lambda: attempts() == 3 and w.reloads == 1, "the edit to be applied")
    assert (w.reloads, w.failures, w.last_error) == (1, 0, None)
    assert w.settings is not None and w.settings.policies["p"].retry.max_attempts == 3  # type: ignore[union-attr]
    w.stop()
    assert not w.running and watch_threads() == []


def test_a_bad_initial_config_raises_and_starts_no_thread(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies: {p: {retry: {max_attempts: five}}}\n")
    with pytest.raises(PolicyConfigError, match=r"policies\.p\.retry\.max_attempts"):
        watch(bad)
    with pytest.raises(PolicyConfigError, match="no such file"):
        watch(tmp_path / "missing.yaml")
    assert watch_threads() == []
    ok = tmp_path / "ok.yaml"
    ok.write_text(retry_yaml(4))
    with watch(ok, interval=FAST):  # the failed starts left nothing registered
        assert attempts() == 4


@pytest.mark.parametrize(
    ("name", "edit", "problems"),
    [
        ("invalid YAML", "policies: {p: [\n", ["cannot read YAML"]),
        (
            "two bad values",
            "policies:\n  p: {retry: {max_attempts: 0}, cache: {ttl: soon}}\n",
            ["guardrails.policies.p.retry.max_attempts", "guardrails.policies.p.cache.ttl"],
        ),
        ("an empty file", "", ["the file is empty"]),
        ("a typo", "policies:\n  p: {retri: {max_attempts: 5}}\n", ["policies.p.retri"]),
        ("removed", None, ["no such file or directory"]),
    ],
)
def test_a_bad_edit_is_logged_with_every_problem_and_the_last_good_config_stays(
    conf_file: Path,
    running: list[Watcher],
    logs: pytest.LogCaptureFixture,
    name: str,
    edit: str | None,
    problems: list[str],
) -> None:
    @guarded("p")
    def f() -> str:
        return "ran"

    w = start(running, conf_file, interval=FAST)
    assert f() == "ran"
    before_totals = reload_counts()
    if edit is None:
        conf_file.unlink()
    else:
        replace_atomically(conf_file, edit)
    wait_for(lambda: w.failures == 1, f"the failed reload ({name})")
    assert attempts() == 2 and f() == "ran"
    assert isinstance(w.last_error, PolicyConfigError)
    errors = [r for r in logs.records if r.levelno == logging.ERROR and "reloading" in r.message]
    assert len(errors) == 1
    assert str(conf_file) in errors[0].message
    assert "the configuration in force is unchanged" in errors[0].message
    for problem in problems:
        assert problem in errors[0].message
    assert reload_counts()[1] == before_totals[1] + 1
    looks_after(w)
    assert w.failures == 1  # a bad file that stays bad is not tried again and again
    replace_atomically(conf_file, retry_yaml(5))
    wait_for(
        lambda: attempts() == 5 and reload_counts()[0] == before_totals[0] + 1,
        "the next good edit, counted",
    )
    assert (w.reloads, w.failures, w.last_error) == (1, 1, None)
    assert reload_counts() == (before_totals[0] + 1, before_totals[1] + 1)
    assert guardrails.stats()["p"].calls == 2  # a reload never resets the statistics


def test_an_unchanged_file_is_never_reloaded(conf_file: Path, running: list[Watcher]) -> None:
    @guarded("p")
    def f() -> int:
        return 1

    w = start(running, conf_file, interval=FAST)
    f()
    text = conf_file.read_text()
    looks_after(w)
    os.utime(conf_file)  # touched
    looks_after(w)
    _in_place(conf_file, text)  # saved with the same bytes
    looks_after(w)
    replace_atomically(conf_file, text)  # a new inode, the same bytes
    looks_after(w)
    assert (w.reloads, w.failures) == (0, 0)
    assert guardrails.stats()["p"].calls == 1


def test_two_edits_of_the_same_size_in_quick_succession_are_both_seen(
    conf_file: Path, running: list[Watcher]
) -> None:
    """Within a file system's timestamp granularity, a rewrite of the same size keeps the
    file's status: the watcher reads files that changed recently."""
    w = start(running, conf_file, interval=FAST)
    for n in (3, 4, 5, 6, 7, 8, 9):
        _in_place(conf_file, retry_yaml(n))  # never empty, never missing
        wait_for(lambda n=n: attempts() == n, f"max_attempts {n}")  # type: ignore[misc]
    assert w.failures == 0


# --- how editors save ---------------------------------------------------------------------


def _in_place(path: Path, text: str) -> None:
    with open(path, "r+") as f:
        f.seek(0)
        f.write(text)
        f.truncate()


def _truncate_then_write(path: Path, text: str) -> None:
    with open(path, "w") as f:  # truncated here: a look now sees an empty file
        f.flush()
        os.fsync(f.fileno())
        f.write(text)


def _rename_over(path: Path, text: str) -> None:
    replace_atomically(path, text)


def _backup_then_write(path: Path, text: str) -> None:
    # vim without backupcopy: the file is renamed away, then written anew (briefly missing)
    os.replace(path, path.with_name(path.name + "~"))
    path.write_text(text)


@pytest.mark.parametrize(
    "save", [_in_place, _truncate_then_write, _rename_over, _backup_then_write]
)
def test_each_way_editors_save_is_applied(
    conf_file: Path, running: list[Watcher], save: Callable[[Path, str], None]
) -> None:
    w = start(running, conf_file, interval=FAST)
    for n in (3, 4, 5):
        save(conf_file, retry_yaml(n, extra=f"    cache: {{ttl: {n}}}\n"))
        wait_for(lambda n=n: attempts() == n, f"save {n}")  # type: ignore[misc]
        looks_after(w)
    # A look may have caught a transient state (empty, missing): each one is a failure
    # logged, and the save after it was applied anyway.
    assert w.reloads + w.failures >= 3 and w.last_error is None


def test_a_symlink_swap_as_kubernetes_does_with_a_config_map(
    tmp_path: Path, running: list[Watcher]
) -> None:
    data = tmp_path / "v1"
    data.mkdir()
    (data / "guardrails.yaml").write_text(retry_yaml(2))
    (tmp_path / "..data").symlink_to("v1")
    mounted = tmp_path / "guardrails.yaml"
    mounted.symlink_to("..data/guardrails.yaml")
    start(running, mounted, interval=FAST)
    assert attempts() == 2
    new = tmp_path / "v2"
    new.mkdir()
    (new / "guardrails.yaml").write_text(retry_yaml(6))
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    wait_for(lambda: attempts() == 6, "the swapped config map")


# --- a config directory composed with Hydra -----------------------------------------------


def _conf_dir(root: Path, ttl: int) -> Path:
    conf = root / "conf"
    (conf / "guardrails").mkdir(parents=True, exist_ok=True)
    (conf / "config.yaml").write_text(
        "defaults:\n  - guardrails: default\n  - _self_\nhydra:\n  searchpath: [pkg://guardrails.conf]\n"
    )
    (conf / "guardrails" / "default.yaml").write_text(
        f"policies:\n  p:\n    retry: {{max_attempts: 2}}\n    cache: {{ttl: {ttl}}}\n"
    )
    return conf


def test_a_config_directory_is_recomposed_with_its_overrides(
    tmp_path: Path, running: list[Watcher]
) -> None:
    conf = _conf_dir(tmp_path, ttl=10)
    w = start(
        running, conf, overrides=["guardrails.policies.p.retry.max_attempts=7"], interval=FAST
    )
    assert attempts() == 7 and policy("p").cache.ttl == 10  # type: ignore[union-attr]
    replace_atomically(
        conf / "guardrails" / "default.yaml",
        "policies:\n  p:\n    retry: {max_attempts: 2}\n    cache: {ttl: 20}\n",
    )
    wait_for(
        lambda: policy("p").cache.ttl == 20 and w.reloads == 1,  # type: ignore[union-attr]
        "the group file's edit",
    )
    assert attempts() == 7  # the override still applies
    # A new group option is a change too; a file that is not YAML is not.
    (conf / "guardrails" / "notes.txt").write_text("not config")
    looks_after(w)
    assert w.reloads == 1
    replace_atomically(conf / "guardrails" / "other.yaml", "policies: {}\n")
    wait_for(lambda: w.reloads == 2, "the new file")
    # Emacs' lock files and hidden directories are not config.
    (conf / ".#config.yaml").symlink_to("nobody@host.1234")
    (conf / ".cache").mkdir()
    (conf / ".cache" / "x.yaml").write_text("junk: [")
    looks_after(w)
    assert (w.reloads, w.failures) == (2, 0)


def test_a_group_file_caught_empty_while_saved_does_not_remove_its_policies(
    tmp_path: Path, running: list[Watcher], logs: pytest.LogCaptureFixture
) -> None:
    """Hydra composes an empty file as an empty config: without the check, a look during a
    truncate-then-write save would install a configuration with no policies."""
    conf = _conf_dir(tmp_path, ttl=10)
    (conf / "guardrails" / "spare.yaml").write_text("")  # empty from the start: fine
    w = start(running, conf, interval=FAST)
    group = conf / "guardrails" / "default.yaml"
    replace_atomically(group, "# being saved\n\n")
    wait_for(lambda: w.failures == 1, "the refused empty file")
    assert policy("p").cache.ttl == 10  # type: ignore[union-attr]
    assert "became empty" in str(w.last_error) and str(group) in str(w.last_error)
    assert any("became empty" in r.message for r in logs.records if r.levelno == logging.ERROR)
    replace_atomically(group, "policies:\n  p:\n    cache: {ttl: 11}\n")
    wait_for(lambda: w.reloads == 1, "the saved file")
    assert policy("p").cache.ttl == 11  # type: ignore[union-attr]
    replace_atomically(group, "{}\n")  # an empty config, said so: applied
    wait_for(lambda: w.reloads == 2, "the explicit empty config")
    assert "p" not in w.settings.policies  # type: ignore[union-attr]


def test_two_threads_starting_watchers_at_once_get_one(
    conf_file: Path, running: list[Watcher]
) -> None:
    barrier = threading.Barrier(4)
    outcomes: list[object] = []

    def starter() -> None:
        barrier.wait()
        try:
            outcomes.append(watch(conf_file, interval=FAST))
        except RuntimeError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=starter) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [o for o in outcomes if isinstance(o, Watcher)]
    running.extend(started)
    assert len(started) == 1 and len(outcomes) == 4
    assert len(watch_threads()) == 1


def test_a_fifo_named_like_yaml_in_the_directory_never_hangs_the_watcher(
    tmp_path: Path, running: list[Watcher]
) -> None:
    conf = _conf_dir(tmp_path, ttl=10)
    os.mkfifo(conf / "guardrails" / "trap.yaml")
    w = start(running, conf, interval=FAST)
    looks_after(w)
    replace_atomically(
        conf / "guardrails" / "default.yaml", "policies:\n  p:\n    cache: {ttl: 30}\n"
    )
    wait_for(lambda: policy("p").cache.ttl == 30, "the edit")  # type: ignore[union-attr]


def test_a_directory_removed_and_restored(tmp_path: Path, running: list[Watcher]) -> None:
    conf = _conf_dir(tmp_path, ttl=10)
    w = start(running, conf, interval=FAST)
    moved = tmp_path / "moved"
    os.replace(conf, moved)
    wait_for(lambda: w.failures == 1, "the failure")
    assert "no such file or directory" in str(w.last_error)
    assert policy("p").cache.ttl == 10  # type: ignore[union-attr]
    os.replace(moved, conf)
    wait_for(lambda: w.reloads == 1, "the restored directory")


# --- stopping -----------------------------------------------------------------------------


def test_stop_is_idempotent_works_from_any_thread_and_as_a_context_manager(
    conf_file: Path,
) -> None:
    with watch(conf_file, interval=FAST) as w:
        assert w.running
    assert not w.running and watch_threads() == []
    w.stop()
    w2 = watch(conf_file, interval=FAST)
    stopper = threading.Thread(target=w2.stop)
    stopper.start()
    stopper.join()
    assert not w2.running and watch_threads() == []
    w2.stop()


def test_stop_from_the_reload_callback_ends_the_thread(conf_file: Path) -> None:
    seen: list[int] = []
    holder: list[Watcher] = []

    def on_reload(settings: guardrails.Settings) -> None:
        seen.append(settings.policies["p"].retry.max_attempts)  # type: ignore[union-attr]
        holder[0].stop()  # on the watcher's own thread: must not join itself

    holder.append(watch(conf_file, interval=FAST, on_reload=on_reload))
    replace_atomically(conf_file, retry_yaml(3))
    wait_for(lambda: watch_threads() == [], "the watching thread to end")
    assert seen == [3] and not holder[0].running
    holder[0].stop()


def test_a_callback_that_raises_is_logged_and_watching_goes_on(
    conf_file: Path, running: list[Watcher], logs: pytest.LogCaptureFixture
) -> None:
    def on_reload(settings: guardrails.Settings) -> None:
        raise RuntimeError("callback bug")

    w = start(running, conf_file, interval=FAST, on_reload=on_reload)
    replace_atomically(conf_file, retry_yaml(3))
    wait_for(lambda: w.reloads == 1, "the reload")
    wait_for(lambda: any(r.exc_info for r in logs.records), "the logged error")
    (record,) = [r for r in logs.records if r.exc_info]
    assert "on_reload" in record.message and "callback bug" in str(record.exc_info[1])  # type: ignore[index]
    replace_atomically(conf_file, retry_yaml(4))
    wait_for(lambda: attempts() == 4, "the next reload")


def test_a_second_watcher_is_refused_while_one_runs(
    conf_file: Path, tmp_path: Path, running: list[Watcher]
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(retry_yaml(9))
    w = start(running, conf_file, interval=FAST)
    with pytest.raises(RuntimeError, match="is running; stop"):
        watch(other)
    assert attempts() == 2  # the refused one configured nothing
    w.stop()
    start(running, other, interval=FAST)
    assert attempts() == 9


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"interval": 0}, ValueError),
        ({"interval": -1}, ValueError),
        ({"interval": float("nan")}, ValueError),
        ({"interval": True}, ValueError),
        ({"interval": "1s"}, ValueError),
        ({"overrides": "a=b"}, TypeError),
        ({"on_reload": 3}, TypeError),
    ],
)
def test_bad_arguments_are_refused(conf_file: Path, kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        watch(conf_file, **kwargs)
    assert watch_threads() == []


def test_a_mapping_is_not_watchable() -> None:
    with pytest.raises(TypeError, match="configure"):
        watch({"policies": {}})  # type: ignore[arg-type]


# --- concurrency --------------------------------------------------------------------------


def _versioned(n: int) -> str:
    """Config ``n``: ``p`` retries ``n`` times then falls back to ``n``."""
    return (
        "policies:\n  p:\n"
        f"    retry: {{max_attempts: {n}, wait: {{initial: 0, max: 0}}}}\n"
        f"    fallback: {{value: {n}}}\n"
        "    log: {enabled: false}\n"
    )


def test_calls_during_reloads_each_run_on_one_whole_config(
    tmp_path: Path, running: list[Watcher]
) -> None:
    """Four threads call while the file is rewritten twenty times: each call's fallback value
    and its number of attempts come from the same config, and no thread ever goes back."""
    path = tmp_path / "g.yaml"
    path.write_text(_versioned(1))
    local = threading.local()

    @guarded("p")
    def always_fails() -> int:
        local.attempts += 1
        raise ConnectionError("down")

    w = start(running, path, interval=FAST)
    done = threading.Event()
    problems: list[str] = []
    seen: list[set[int]] = [set() for _ in range(4)]

    def caller(i: int) -> None:
        last = 0
        while not done.is_set():
            local.attempts = 0
            value = always_fails()
            if value != local.attempts:
                problems.append(f"value {value} after {local.attempts} attempts")
            if value < last:
                problems.append(f"went back from {last} to {value}")
            last = value
            seen[i].add(value)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for n in range(2, 22):
            replace_atomically(path, _versioned(n))
            wait_for(lambda n=n: w.reloads == n - 1, f"reload {n}")  # type: ignore[misc]
    finally:
        done.set()
        for t in threads:
            t.join()
    assert problems == []
    assert w.failures == 0
    assert all(len(s) > 1 for s in seen)  # each thread ran across reloads


# --- fork ---------------------------------------------------------------------------------


def test_a_forked_child_has_no_watcher_running_and_may_start_its_own(
    conf_file: Path, tmp_path: Path, running: list[Watcher]
) -> None:
    w = start(running, conf_file, interval=FAST)
    other = tmp_path / "child.yaml"
    other.write_text(retry_yaml(8))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            assert not w.running
            w.stop()  # the parent's thread: nothing to join
            with watch(other, interval=FAST) as mine:
                assert mine.running and attempts() == 8
            code = 0
        finally:
            os._exit(code)
    assert reap(pid) == 0
    assert w.running and attempts() == 2
