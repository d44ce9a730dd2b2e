"""Choosing the cgroup hierarchy and the control files written, on fake trees.

(The real hierarchy of this machine, with real processes, is in ``test_sandbox.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from incisive_hub._cgroups import CgroupUnavailable, Limits, find_driver

LIMITS = Limits(memory=256 << 20, cpu=0.5, pids=100)


def _v2_tree(tmp_path: Path, controllers: str, own: str = "/hub.service") -> tuple[Path, Path]:
    mount = tmp_path / "cgroup2"
    base = mount / own.lstrip("/")
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text(controllers + "\n")
    (base / "cgroup.subtree_control").write_text("\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"30 23 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    self_cgroup = tmp_path / "cgroup"
    self_cgroup.write_text(f"0::{own}\n")
    return mountinfo, self_cgroup


def test_v2_with_controllers_is_chosen_and_written(tmp_path: Path) -> None:
    mountinfo, self_cgroup = _v2_tree(tmp_path, "cpuset cpu io memory pids")
    driver = find_driver("incisive-hub-abc", mountinfo=mountinfo, self_cgroup=self_cgroup)
    base = tmp_path / "cgroup2" / "hub.service"
    assert driver.version == 2 and driver.bases == {"unified": base}
    assert (base / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    cgroups = driver.create("alice", LIMITS)
    unit = base / "incisive-hub-abc" / "alice"
    assert cgroups.dirs == {"unified": unit}
    assert (base / "incisive-hub-abc" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (unit / "memory.max").read_text() == str(256 << 20)
    assert (unit / "cpu.max").read_text() == "50000 100000"
    assert (unit / "pids.max").read_text() == "100"
    assert cgroups.read("pids.max") == "100"


def test_v2_without_controllers_falls_back_to_v1(tmp_path: Path) -> None:
    mountinfo, self_cgroup = _v2_tree(tmp_path, "", own="/")
    lines = [mountinfo.read_text()]
    for i, controllers in enumerate(("cpu,cpuacct", "memory", "pids")):
        point = tmp_path / controllers
        # the memory hierarchy is mounted from a sub-cgroup (as in some containers)
        root = "/outer" if controllers == "memory" else "/"
        (point / "job" / "7").mkdir(parents=True)
        lines.append(f"{40 + i} 23 0:{40 + i} {root} {point} rw - cgroup cgroup rw,{controllers}\n")
    mountinfo.write_text("".join(lines))
    self_cgroup.write_text("9:pids:/job/7\n4:memory:/outer/job/7\n2:cpu,cpuacct:/job/7\n0::/\n")
    driver = find_driver("incisive-hub-abc", mountinfo=mountinfo, self_cgroup=self_cgroup)
    assert driver.version == 1
    assert driver.bases == {"memory": tmp_path / "memory" / "job" / "7",
                            "cpu": tmp_path / "cpu,cpuacct" / "job" / "7",
                            "pids": tmp_path / "pids" / "job" / "7"}
    cgroups = driver.create("bob", LIMITS)
    assert cgroups.read("memory.limit_in_bytes") == str(256 << 20)
    assert cgroups.read("cpu.cfs_quota_us") == "50000"
    assert cgroups.read("cpu.cfs_period_us") == "100000"
    assert cgroups.read("pids.max") == "100"


def test_nothing_usable_says_what_was_found(tmp_path: Path) -> None:
    mountinfo, self_cgroup = _v2_tree(tmp_path, "cpu io")
    with pytest.raises(CgroupUnavailable, match=r"offers no memory, pids controller.*no cgroup v1 memory"):
        find_driver("incisive-hub-abc", mountinfo=mountinfo, self_cgroup=self_cgroup)


def test_names_and_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        Limits(memory=0, cpu=1, pids=1)
    assert Limits(memory=1, cpu=0.001, pids=1).cpu_quota_us == 1000  # the kernel's minimum
    from incisive_hub._cgroups import Driver

    with pytest.raises(ValueError, match="must match"):
        Driver(1, {}, "../escape")
    with pytest.raises(ValueError, match="must match"):
        Driver(1, {}, "ok").cgroups("a/b")
