"""The effective memory limit ("80%" of what) on fake cgroup v1, v2 and hybrid trees."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psutil
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from guardrails._units import _cgroup_limits, _memory_limit

TOTAL = psutil.virtual_memory().total
#: What cgroup v1 reports for "no limit" with 4 KiB pages, and with 64 KiB pages.
V1_NO_LIMIT = 9223372036854771712
V1_NO_LIMIT_64K = 2**63 - 65536
V1 = "memory.limit_in_bytes"
V2 = "memory.max"
UNREADABLE = object()


def _tree(root: Path, files: dict[str, object]) -> None:
    """Write ``files`` under ``root``; ``UNREADABLE`` puts a directory where the file goes."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is UNREADABLE:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(f"{content}\n")


def _membership(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("controllers", "mount"),
    [("memory", "memory"), ("cpu,memory", "cpu,memory"), ("cpu,memory", "memory")],
)
def test_v1_the_own_cgroup_and_every_ancestor_limit_the_process(
    tmp_path: Path, controllers: str, mount: str
) -> None:
    root = tmp_path / "cgroup"
    _tree(
        root / mount,
        {
            V1: V1_NO_LIMIT,
            f"kubepods/{V1}": V1_NO_LIMIT,
            f"kubepods/pod1/{V1}": TOTAL // 4,  # the ancestor is the tighter one
            f"kubepods/pod1/ctr/{V1}": TOTAL // 2,
            f"kubepods/pod2/{V1}": TOTAL // 8,  # a sibling: not this process's limit
        },
    )
    membership = _membership(
        tmp_path,
        "12:pids:/kubepods/pod1/ctr",
        f"4:{controllers}:/kubepods/pod1/ctr",
        "1:name=systemd:/kubepods/pod1/ctr",
        "0::/",
    )
    assert sorted(_cgroup_limits(root, membership)) == [TOTAL // 4, TOTAL // 2]
    assert _memory_limit(root, membership) == TOTAL // 4


@pytest.mark.parametrize("no_limit", [V1_NO_LIMIT, V1_NO_LIMIT_64K, 2**63 - 1, 2**62])
def test_v1_no_limit_is_no_limit_and_never_beats_physical_memory(
    tmp_path: Path, no_limit: int
) -> None:
    root = tmp_path / "cgroup"
    _tree(root / "memory", {V1: no_limit, f"user.slice/{V1}": no_limit})
    membership = _membership(tmp_path, "4:memory:/user.slice")
    assert _cgroup_limits(root, membership) == []
    assert _memory_limit(root, membership) == TOTAL


def test_hybrid_v1_and_v2_limits_both_apply_each_with_its_ancestors(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _tree(
        root,
        {
            V2: "max",
            f"app/{V2}": TOTAL // 3,
            f"app/job/{V2}": "max",
            f"app/job/worker/{V2}": TOTAL // 2,
            f"memory/{V1}": V1_NO_LIMIT,
            f"memory/app/{V1}": TOTAL // 5,
            f"memory/app/job/worker/{V1}": V1_NO_LIMIT,
        },
    )
    membership = _membership(tmp_path, "0::/app/job/worker", "4:memory:/app/job/worker")
    assert sorted(_cgroup_limits(root, membership)) == [TOTAL // 5, TOTAL // 3, TOTAL // 2]
    assert _memory_limit(root, membership) == TOTAL // 5


def test_garbage_and_unreadable_limit_files_are_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    garbage: list[object] = ["max", "", "12abc", b"\xff\xfe\x00", "-1", "0", "1e9", "１２", "0x10"]
    files: dict[str, object] = {V2: UNREADABLE, f"memory/{V1}": UNREADABLE}
    for i, text in enumerate(garbage):
        files[f"{'/'.join(f'g{j}' for j in range(i + 1))}/{V2}"] = text
        files[f"memory/{'/'.join(f'g{j}' for j in range(i + 1))}/{V1}"] = text
    deepest = "/".join(f"g{j}" for j in range(len(garbage) + 1))
    files[f"{deepest}/{V2}"] = TOTAL // 2
    files[f"memory/{deepest}/{V1}"] = UNREADABLE
    _tree(root, files)
    membership = _membership(tmp_path, f"0::/{deepest}", f"4:memory:/{deepest}")
    assert _cgroup_limits(root, membership) == [TOTAL // 2]


def test_a_garbled_membership_file_is_survived_and_never_leads_outside_the_mount(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgroup"
    _tree(tmp_path, {f"outside/{V2}": 4096, f"outside/{V1}": 4096})
    _tree(root, {f"memory/ok/{V1}": TOTAL // 2})
    membership = tmp_path / "proc-self-cgroup"
    membership.write_bytes(
        b"garbage\n\n4:memory\n0::/../../outside\n0::/../outside\n5:memory:/../outside\n"
        b"0::/\xff\xfe\n4:memory:/ok\n"
    )
    assert _cgroup_limits(root, membership) == [TOTAL // 2]
    assert _cgroup_limits(root, tmp_path / "missing") == []
    assert _cgroup_limits(root, root) == []  # a directory, not a file


# One level of a cgroup: no file, a file saying "max", garbage, v1's "no limit", an unreadable
# file, or a limit.
_LEVEL = st.one_of(
    st.none(),
    st.sampled_from(["max", "garbage", V1_NO_LIMIT, V1_NO_LIMIT_64K, UNREADABLE]),
    st.integers(1, 2**62),
)


#: v1 controllers as /proc/self/cgroup lists them, and the directory their hierarchy is under.
_V1_LAYOUTS = [("memory", "memory"), ("cpu,memory", "cpu,memory"), ("cpu,memory", "memory")]


def _limit(value: object) -> int | None:
    return value if isinstance(value, int) and 0 < value < 2**62 else None


@given(
    v1=st.none() | st.lists(_LEVEL, min_size=1, max_size=4),
    v2=st.none() | st.lists(_LEVEL, min_size=1, max_size=4),
    mounted_at_root=st.booleans(),
    v1_layout=st.sampled_from(_V1_LAYOUTS),
)
# Containers whose own cgroup is bind-mounted at the mount's root (v1), or with no cgroup
# namespace (v2).
@example(v1=[TOTAL // 4], v2=None, mounted_at_root=True, v1_layout=("memory", "memory"))
@example(v1=[TOTAL // 4], v2=None, mounted_at_root=True, v1_layout=("cpu,memory", "cpu,memory"))
@example(v1=None, v2=[TOTAL // 4], mounted_at_root=True, v1_layout=("memory", "memory"))
@example(
    v1=[V1_NO_LIMIT, TOTAL // 4, TOTAL // 2],
    v2=None,
    mounted_at_root=False,
    v1_layout=("memory", "memory"),
)
def test_the_limit_is_the_tightest_of_the_own_cgroup_its_ancestors_and_physical_memory(
    v1: list[object] | None,
    v2: list[object] | None,
    mounted_at_root: bool,
    v1_layout: tuple[str, str],
) -> None:
    """``levels[0]`` is the mount's root, ``levels[i]`` the i-th cgroup down to the process's.
    Mounted at the root: the mount shows the process's own cgroup, which /proc/self/cgroup
    names by a path (the host's) that does not exist under the mount."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cgroup"
        files: dict[str, object] = {}
        lines: list[str] = []
        expected: list[int] = []
        controllers, v1_mount = v1_layout
        for levels, mount, name, line in (
            (v1, f"{v1_mount}/", V1, f"4:{controllers}:"),
            (v2, "", V2, "0::"),
        ):
            if levels is None:
                continue
            shown = levels[:1] if mounted_at_root else levels
            for depth, value in enumerate(shown):
                if value is not None:
                    files[mount + "".join(f"c{i}/" for i in range(1, depth + 1)) + name] = value
            path = "/".join(f"c{i}" for i in range(1, len(levels)))
            lines.append(line + ("/host/pod/" if mounted_at_root else "/") + path)
            expected += [limit for value in shown if (limit := _limit(value)) is not None]
        _tree(root, files)
        membership = Path(tmp) / "proc-self-cgroup"
        membership.write_text("".join(f"{line}\n" for line in lines))
        assert sorted(_cgroup_limits(root, membership)) == sorted(expected)
        assert _memory_limit(root, membership) == min([TOTAL, *expected])
