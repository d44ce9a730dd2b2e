"""The sandbox's argv as data (incisive_kernels.sandbox): no process is started here except
where a test says so (the host layout reads a fake root)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from incisive_kernels.sandbox import (
    GATEWAY_PATH,
    HostLayout,
    SandboxError,
    SandboxSpec,
    build_argv,
    find_bwrap,
    host_layout,
    ipc_prefix,
    kernel_env,
)

LAYOUT = HostLayout(links=(("usr/bin", "/bin"), ("usr/lib", "/lib")), dirs=("/usr",),
                    etc=("/etc/ld.so.cache",))
PY = "/srv/venv/bin/python"


BASE = SandboxSpec(
    command=(PY, "-m", "ipykernel_launcher", "-f", "/run/j/kernel-1.json"),
    workspace="/workspace", ipc_dir="/run/j/k-abc", connection_file="/run/j/kernel-1.json",
    env={"HOME": "/workspace", "PATH": "/srv/venv/bin:/usr/bin"},
    ro_paths=("/srv/venv", "/opt/python3.11", "/src/incisive_lab"))


def spec(**over: Any) -> SandboxSpec:
    return dataclasses.replace(BASE, **over)


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    """Every ``flag SRC DEST`` in ``argv``."""
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def options(argv: list[str]) -> list[str]:
    return argv[:argv.index("--")]


def test_every_namespace_unshared_no_capabilities_and_the_command_last() -> None:
    argv = build_argv("/usr/bin/bwrap", spec(), LAYOUT)
    opts = options(argv)
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                 "--new-session", "--clearenv"):
        assert flag in opts
    assert opts[opts.index("--cap-drop") + 1] == "ALL"
    assert "--share-net" not in argv
    assert argv[argv.index("--") + 1:] == list(spec().command)


def test_binds_are_exactly_the_workspace_sockets_connection_file_and_read_only_paths() -> None:
    argv = build_argv("/usr/bin/bwrap", spec(gateway_socket="/srv/run/gw.sock"), LAYOUT)
    assert pairs(argv, "--bind") == [("/workspace", "/workspace"), ("/run/j/k-abc", "/run/j/k-abc")]
    ro = pairs(argv, "--ro-bind")
    assert ("/run/j/kernel-1.json", "/run/j/kernel-1.json") in ro
    assert ("/srv/run/gw.sock", GATEWAY_PATH) in ro
    assert {d for s, d in ro} == {"/usr", "/srv/venv", "/opt/python3.11", "/src/incisive_lab",
                                  "/run/j/kernel-1.json", GATEWAY_PATH}
    assert pairs(argv, "--symlink") == [("usr/bin", "/bin"), ("usr/lib", "/lib")]
    assert pairs(argv, "--ro-bind-try") == [("/etc/ld.so.cache", "/etc/ld.so.cache")]


def test_no_gateway_no_socket_bound() -> None:
    argv = build_argv("/usr/bin/bwrap", spec(gateway_socket=None), LAYOUT)
    assert GATEWAY_PATH not in argv


def test_proc_fresh_or_an_empty_tmpfs_never_the_outer_one() -> None:
    fresh = options(build_argv("/usr/bin/bwrap", spec(fresh_proc=True), LAYOUT))
    nested = options(build_argv("/usr/bin/bwrap", spec(fresh_proc=False), LAYOUT))
    assert fresh[fresh.index("--proc") + 1] == "/proc"
    assert "--proc" not in nested
    assert ("/proc", "/proc") not in pairs(nested, "--ro-bind") + pairs(nested, "--bind")
    assert "/proc" in [nested[i + 1] for i, a in enumerate(nested) if a == "--tmpfs"]


def test_tmp_is_a_tmpfs_before_any_bind_under_it_and_root_read_only_last() -> None:
    s = spec(workspace="/tmp/ws", ipc_dir="/tmp/rt/k-1", connection_file="/tmp/rt/kernel-1.json")
    opts = options(build_argv("/usr/bin/bwrap", s, LAYOUT))
    tmp_at = [i for i, a in enumerate(opts) if a == "--tmpfs" and opts[i + 1] == "/tmp"]
    under_tmp = [i for i, a in enumerate(opts)
                 if a in ("--bind", "--ro-bind") and opts[i + 2].startswith("/tmp/")]
    assert len(tmp_at) == 1 and len(under_tmp) == 3
    assert all(i > tmp_at[0] for i in under_tmp)
    assert opts[opts.index("--remount-ro") + 1] == "/"
    last_mount = max(i for i, a in enumerate(opts) if a in ("--bind", "--ro-bind", "--tmpfs"))
    assert opts.index("--remount-ro") > last_mount


def test_parents_are_mounted_first_so_a_read_only_library_inside_the_workspace_stays_read_only() -> None:
    s = spec(workspace="/home/u", ro_paths=("/home/u/lib/incisive_lab",), cwd="/home/u/notebooks")
    opts = options(build_argv("/usr/bin/bwrap", s, LAYOUT))
    ws = opts.index("/home/u")
    lib = opts.index("/home/u/lib/incisive_lab")
    assert ws < lib and opts[lib - 1] == "--ro-bind"
    assert opts[opts.index("--chdir") + 1] == "/home/u/notebooks"


def test_read_only_paths_under_system_dirs_or_each_other_are_not_bound_twice() -> None:
    s = spec(ro_paths=("/usr", "/usr/lib/python3.11", "/srv/venv/lib", "/srv/venv", "/srv/venv"))
    ro = [d for _, d in pairs(build_argv("/usr/bin/bwrap", s, LAYOUT), "--ro-bind")]
    assert ro.count("/usr") == 1 and ro.count("/srv/venv") == 1
    assert "/usr/lib/python3.11" not in ro and "/srv/venv/lib" not in ro


def test_environment_is_cleared_and_set_only_from_the_spec() -> None:
    argv = build_argv("/usr/bin/bwrap", spec(env={"HOME": "/workspace", "A": "1"}), LAYOUT)
    assert argv.index("--clearenv") < argv.index("--setenv")
    assert pairs(argv, "--setenv") == [("A", "1"), ("HOME", "/workspace")]


@pytest.mark.parametrize(("over", "named"), [
    ({"workspace": "/"}, "workspace"),
    ({"workspace": "/tmp"}, "workspace"),
    ({"workspace": "/usr/share"}, "workspace"),
    ({"workspace": "/proc/1"}, "workspace"),
    ({"workspace": "workspace"}, "workspace"),
    ({"workspace": "/w/../etc"}, "workspace"),
    ({"cwd": "/elsewhere"}, "cwd"),
    ({"cwd": "/workspace-other"}, "cwd"),
    ({"ro_paths": ("/",)}, "ro_paths"),
    ({"ro_paths": ("/proc/self",)}, "ro_paths"),
    ({"ro_paths": ("/tmp",)}, "ro_paths"),
    ({"ipc_dir": "/run/" + "x" * 120}, "ipc_dir"),
    ({"connection_file": "rel.json"}, "connection_file"),
    ({"ipc_dir": "/workspace/.local/share/jupyter/runtime/k-1"}, "ipc_dir.*JUPYTER_RUNTIME_DIR"),
    ({"connection_file": "/workspace/kernel-1.json"}, "connection_file.*JUPYTER_RUNTIME_DIR"),
    ({"gateway_socket": "gw.sock"}, "gateway_socket"),
    ({"env": {"A=B": "1"}}, "env"),
    ({"command": ()}, "command"),
])
def test_bad_specs_are_refused_naming_the_setting(over: dict[str, Any], named: str) -> None:
    with pytest.raises(SandboxError, match=named):
        build_argv("/usr/bin/bwrap", spec(**over), LAYOUT)


def test_ipc_prefix_keeps_socket_paths_under_the_unix_limit() -> None:
    assert ipc_prefix("/run/incisive/jupyter/k-abc") == "/run/incisive/jupyter/k-abc/k"
    ok = "/" + "a" * (107 - len("/k-99999") - 1)
    assert len(ipc_prefix(ok) + "-99999") == 107
    with pytest.raises(SandboxError, match="107"):
        ipc_prefix(ok + "a")


def test_kernel_env_is_an_allow_list() -> None:
    parent = {"JUPYTERHUB_API_TOKEN": "t0k3n", "JUPYTERHUB_USER": "alice", "AWS_SECRET_ACCESS_KEY": "s",
              "LANG": "en_GB.UTF-8", "LC_ALL": "C", "JPY_SESSION_NAME": "/w/a.ipynb",
              "JPY_PARENT_PID": "4242", "PYTHONPATH": "/evil", "LD_PRELOAD": "/evil.so",
              "INCISIVE_GATEWAY_SOCKET": "/srv/gw.sock", "OPERATOR_SET": "yes"}
    env = kernel_env(parent, workspace="/workspace", python=PY, gateway=True, spec_env=("OPERATOR_SET",))
    assert env == {"LANG": "en_GB.UTF-8", "LC_ALL": "C", "JPY_SESSION_NAME": "/w/a.ipynb",
                   "OPERATOR_SET": "yes", "PATH": "/srv/venv/bin:/usr/local/bin:/usr/bin:/bin",
                   "HOME": "/workspace", "PYTHONNOUSERSITE": "1", "JPY_PARENT_PID": "1",
                   "INCISIVE_GATEWAY": GATEWAY_PATH}
    assert "INCISIVE_GATEWAY" not in kernel_env(parent, workspace="/w", python=PY, gateway=False)
    assert kernel_env({}, workspace="/w", python=PY, gateway=False)["LANG"] == "C.UTF-8"


def test_host_layout_reads_links_and_directories(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "lib64").mkdir()
    os.symlink("usr/bin", tmp_path / "bin")
    layout = host_layout(str(tmp_path))
    assert layout.links == (("usr/bin", "/bin"),)
    assert layout.dirs == ("/usr", "/lib64")
    with pytest.raises(SandboxError, match="usr"):
        host_layout(str(tmp_path / "nothing"))


def test_missing_bwrap_names_the_apt_get_line(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=r"apt-get install -y bubblewrap"):
        find_bwrap(str(tmp_path / "no-bwrap"))
    assert os.path.isabs(find_bwrap())
