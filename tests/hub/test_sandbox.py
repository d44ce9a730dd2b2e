"""The sandbox spawner with real bubblewrap processes and real cgroups.

Each test starts a program in a user's sandbox through :meth:`SandboxSpawner.start` (the
path the hub takes) and checks what the kernel did: the memory hog is killed at the limit,
the fork bomb stops at the process limit, the CPU quota throttles, the sandbox sees only its
own workspace and no hub secret. Needs root, ``bwrap`` and a writable cgroup hierarchy.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from incisive_hub import HubLedger, SandboxError, SandboxSpawner
from incisive_hub._cgroups import CgroupUnavailable, find_driver
from tests._support.sandbox_roots import allowed_root

from .conftest import result

Make = Callable[..., SandboxSpawner]


def start(spawner: SandboxSpawner) -> None:
    asyncio.run(spawner.start())


def stop(spawner: SandboxSpawner) -> None:
    asyncio.run(spawner.stop())


def wait_exit(spawner: SandboxSpawner, timeout: float = 60.0) -> int:
    assert spawner.proc is not None
    deadline = time.monotonic() + timeout
    while (status := spawner.proc.poll()) is None:
        assert time.monotonic() < deadline, "the sandbox did not exit"
        time.sleep(0.05)
    return status


def test_memory_hog_is_killed_at_the_limit(make_spawner: Make) -> None:
    hog = make_spawner("hog", """
chunks = []
for i in range(64):  # 64 x 16 MiB = 1 GiB, far above the limit
    chunks.append(bytearray(b"\\x01") * (16 << 20))  # written, so really resident
    with open("/workspace/progress", "w") as fh:
        fh.write(str(len(chunks) * 16))
report(survived=True)
""", mem_limit="128M")
    start(hog)
    cgroups = hog._cgroups
    assert cgroups is not None and cgroups.read("memory.limit_in_bytes") == str(128 << 20)
    status = wait_exit(hog)
    assert status != 0
    assert not (hog.workspace_dir / "result.json").exists(), "the hog survived"
    reached = int((hog.workspace_dir / "progress").read_text())
    assert 16 <= reached < 128
    assert cgroups.oom_kills() >= 1 or int(cgroups.read("memory.failcnt")) > 0
    stop(hog)
    assert not any(d.exists() for d in cgroups.dirs.values())


def test_fork_bomb_stops_at_the_process_limit(make_spawner: Make) -> None:
    bomb = make_spawner("bomb", """
children = 0
error = None
while children < 10000:
    try:
        pid = os.fork()
    except OSError as exc:
        error = exc.errno
        break
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    children += 1
report(children=children, errno=error)
time.sleep(120)
""", pids_limit=32)
    start(bomb)
    got = result(bomb)
    cgroups = bomb._cgroups
    assert cgroups is not None
    assert got["errno"] == errno.EAGAIN
    assert 0 < got["children"] < 32
    assert cgroups.read("pids.max") == "32"
    assert int(cgroups.read("pids.current")) <= 32
    stop(bomb)
    assert not any(d.exists() for d in cgroups.dirs.values())
    assert cgroups.pids() == []


def test_cpu_quota_is_applied_and_throttles(make_spawner: Make) -> None:
    spin = make_spawner("spin", """
start = time.process_time()
while time.process_time() - start < 1.0:
    pass
report(done=True)
time.sleep(120)
""", cpu_limit=0.5)
    start(spin)
    assert result(spin) == {"done": True}
    cgroups = spin._cgroups
    assert cgroups is not None
    assert cgroups.read("cpu.cfs_quota_us") == "50000"
    assert cgroups.read("cpu.cfs_period_us") == "100000"
    stat = dict(line.split() for line in cgroups.read("cpu.stat").splitlines())
    assert int(stat["nr_throttled"]) > 0


ISOLATION = """
import glob
seen = {}
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        seen[path] = open(path, "rb").read().decode(errors="replace")
    except OSError:
        pass
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return type(exc).__name__
with open("/workspace/mine.txt", "w") as fh:
    fh.write("mine")
report(
    uid=os.getuid(), hostname=socket.gethostname(), cwd=os.getcwd(), root=sorted(os.listdir("/")),
    repo=sorted(os.listdir(os.environ["REPO"])) if os.path.isdir(os.environ["REPO"]) else None,
    workspace=sorted(os.listdir("/workspace")), environ=dict(os.environ), proc_environ=seen,
    other=[os.path.exists(p) for p in os.environ["PROBES"].split(":")],
    shadow=attempt(lambda: open("/etc/shadow").read()),
    usr_write=attempt(lambda: open("/usr/incisive-test", "w")),
    gateway=open("/etc/incisive/gateway.json").read(),
    gateway_write=attempt(lambda: open("/etc/incisive/gateway.json", "a")),
    pids=sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
)
time.sleep(120)
"""


def test_sandbox_sees_its_own_workspace_and_no_hub_secret(
        make_spawner: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    for name, text in (("jupyterhub.sqlite", "db"), ("jupyterhub_cookie_secret", "c00k1e"),
                       ("crypt-key", "crypt")):
        (state / name).write_text(text)
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "crypt-sentinel-5f1d")
    monkeypatch.setenv("CONFIGPROXY_AUTH_TOKEN", "proxy-sentinel-77aa")
    bob = make_spawner("bob", "time.sleep(1)")
    bob.workspace_dir.mkdir(parents=True)
    (bob.workspace_dir / "bob-secret.txt").write_text("bob's")
    repo = Path(__file__).resolve().parents[2]
    probes = [str(bob.workspace_dir), str(state), str(state / "jupyterhub.sqlite"),
              str(repo / ".git"), str(repo / ".incisive"), str(repo / "hub"), "/root/.ssh",
              "/etc/shadow", "/etc/ssl/private"]
    alice = make_spawner("alice", ISOLATION,
                         environment={"REPO": str(repo), "PROBES": ":".join(probes)})
    start(alice)
    got = result(alice)

    assert got["uid"] == 1000
    assert got["hostname"] == "incisive"
    assert got["cwd"] == "/run/incisive"
    assert set(got["root"]) <= allowed_root("root", "workspace"), got["root"]
    assert set(got["repo"]) <= {".venv", "incisive_lab", "extensions", "kernels"}
    assert got["workspace"] == ["mine.txt"]
    assert (alice.workspace_dir / "mine.txt").read_text() == "mine"
    assert got["other"] == [False] * len(probes)
    assert got["shadow"] == "FileNotFoundError"
    assert got["usr_write"] == "OSError"  # EROFS
    assert json.loads(got["gateway"])["token"] == "hub"
    assert got["gateway_write"] == "OSError"
    # a fresh PID namespace: the hub's processes are not there
    assert max(got["pids"]) < 100
    environ = got["environ"]
    assert not {"JUPYTERHUB_CRYPT_KEY", "CONFIGPROXY_AUTH_TOKEN", "JPY_API_TOKEN"} & environ.keys()
    assert environ["HOME"] == "/workspace" and environ["JUPYTERHUB_ROOT_DIR"] == "/workspace"
    assert environ["INCISIVE_GATEWAY_SOCKET"] == "/run/incisive/gateway.sock"
    assert environ["INCISIVE_GATEWAY_CONFIG"] == "/etc/incisive/gateway.json"
    assert environ["PYTHONSAFEPATH"] == "1" and environ["PYTHONNOUSERSITE"] == "1"
    everything = json.dumps(got)
    for sentinel in ("crypt-sentinel-5f1d", "proxy-sentinel-77aa", "c00k1e", "bob's"):
        assert sentinel not in everything
    allowed = {"HOME", "USER", "LOGNAME", "PATH", "LANG", "TMPDIR", "SHELL", "PWD", "REPO",
               "PROBES", "MEM_LIMIT", "CPU_LIMIT", "PYTHONNOUSERSITE", "PYTHONSAFEPATH",
               "PYTHONDONTWRITEBYTECODE", "IPYTHONDIR", "INCISIVE_GATEWAY_SOCKET",
               "INCISIVE_GATEWAY_CONFIG", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR",
               "JUPYTER_PATH", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
               "JUPYTERLAB_WORKSPACES_DIR"}
    assert {k for k in environ if not k.startswith("JUPYTERHUB_")} <= allowed
    assert oct(alice.workspace_dir.stat().st_mode & 0o777) == "0o700"


def test_spawn_and_stop_are_ledgered_with_the_sandbox_hash(
        make_spawner: Make, hub_ledger: HubLedger) -> None:
    one = make_spawner("one", "report(ok=True); time.sleep(120)")
    two = make_spawner("two", "report(ok=True); time.sleep(120)")
    start(one)
    result(one)
    stop(one)
    events = [e.event for e in hub_ledger.ledger.entries()]
    assert [(e.kind, e.action, e.resource) for e in events] == [
        ("spawn", "spawn", "hub-user:one/server:default"),
        ("spawn", "stop", "hub-user:one/server:default")]
    digest = events[0].details["sandbox_sha256"]
    assert len(digest) == 64 and digest == one.sandbox_sha256() == two.sandbox_sha256()
    assert events[0].details["profile"] == "sandbox" and events[1].outcome.allowed
    two.etc_files = [*two.etc_files, "passwd-"]
    assert two.sandbox_sha256() != digest


def test_a_server_that_exits_while_starting_fails_the_spawn(
        make_spawner: Make, hub_ledger: HubLedger) -> None:
    import sys

    quitter = make_spawner("quitter", cmd=[sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(SandboxError, match="exited with status"):
        start(quitter)
    assert not any(d.exists() for d in quitter.cgroup_driver().cgroups("quitter").dirs.values())
    (event,) = [e.event for e in hub_ledger.ledger.entries()]
    assert (event.kind, event.action, event.outcome.decision) == ("spawn", "fail", "denied")


def test_without_a_writable_cgroup_the_spawn_is_refused(
        make_spawner: Make, tmp_path: Path, hub_ledger: HubLedger) -> None:
    empty = tmp_path / "mountinfo"
    empty.write_text("")
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/\n")

    def no_cgroups(self: SandboxSpawner) -> object:
        return find_driver(self.cgroup_group, mountinfo=empty, self_cgroup=cgroup)

    refused = make_spawner("refused", "report(ok=True); time.sleep(120)")
    refused.cgroup_driver = no_cgroups.__get__(refused)  # type: ignore[method-assign]
    with pytest.raises(SandboxError, match="allow_rlimit_fallback"):
        start(refused)
    assert refused.proc is None
    assert hub_ledger.ledger.entry(0).event.action == "fail"

    fallback = make_spawner("fallback", """
limits = open("/proc/self/limits").read()
report(address_space=[l for l in limits.splitlines() if l.startswith("Max address space")][0])
time.sleep(120)
""", allow_rlimit_fallback=True, mem_limit="1G")
    fallback.cgroup_driver = no_cgroups.__get__(fallback)
    start(fallback)
    assert str(1 << 30) in result(fallback)["address_space"]
    assert fallback._cgroups is None


def test_missing_bwrap_is_an_error_naming_the_package(make_spawner: Make) -> None:
    missing = make_spawner("nobwrap", "time.sleep(1)", bwrap="/nonexistent/bwrap")
    with pytest.raises(SandboxError, match=r"apt-get install .*bubblewrap"):
        start(missing)


def test_a_user_name_unfit_for_a_sandbox_is_refused(make_spawner: Make) -> None:
    odd = make_spawner("Odd Name", "time.sleep(1)")
    with pytest.raises(SandboxError, match="cannot name a sandbox"):
        start(odd)


def test_unsandboxed_peer_runs_the_same_way_without_bwrap(make_spawner: Make) -> None:
    peer = make_spawner("peer", """
report(uid=os.getuid(), home=os.environ["HOME"], cwd=os.getcwd(),
       socket=os.environ["INCISIVE_GATEWAY_SOCKET"], keys=sorted(os.environ))
time.sleep(120)
""", sandbox=False, pids_limit=48)
    start(peer)
    got = result(peer)
    assert got["uid"] == os.getuid()
    assert got["home"] == str(peer.workspace_dir)
    assert got["cwd"] == str(peer.runtime_dir)
    assert got["socket"] == str(peer.runtime_dir / "gateway.sock")
    assert "JUPYTERHUB_CRYPT_KEY" not in got["keys"]
    assert peer._cgroups is not None and peer._cgroups.read("pids.max") == "48"


def test_cgroup_driver_finds_v1_here_or_says_why() -> None:
    try:
        driver = find_driver("incisive-hub-test")
    except CgroupUnavailable as exc:  # pragma: no cover - the machine decides
        pytest.fail(f"no usable cgroup hierarchy on this machine: {exc}")
    assert driver.version in (1, 2)
