"""Red team: exfiltration attempts from a researcher's workspace, each refused.

The researcher is logged in at the demo's hub (real OIDC login), their server runs in its
bubblewrap sandbox, and the code below runs in their sandboxed kernel (no network
namespace; the gateway socket is the only door). Every attempt must fail; the ones that
reach the gateway or a node must also be in that party's ledger as refused.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from incisive_lab.ledger import Ledger
from tests._support.hub_session import HubSession

pytestmark = pytest.mark.timeout(600)

_PRELUDE = textwrap.dedent("""
    import json, os, socket, urllib.request
    def _attempt(name, fn):
        try:
            out = fn()
        except BaseException as exc:  # every failure is a refusal; success is a leak
            print(json.dumps({"name": name, "refused": True, "why": type(exc).__name__ + ": " + str(exc)[:200]}))
        else:
            print(json.dumps({"name": name, "refused": False, "got": repr(out)[:200]}))
""")


def _run_attempts(session: HubSession, kernel: str, attempts: dict[str, str]) -> dict[str, dict[str, Any]]:
    code = _PRELUDE + "\n".join(f"_attempt({name!r}, lambda: {expr})" for name, expr in attempts.items())
    result = session.execute(kernel, code)
    assert result.error is None, result.error
    verdicts = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            v = json.loads(line)
            verdicts[v["name"]] = v
    assert set(verdicts) == set(attempts), result.text
    return verdicts


@pytest.fixture(scope="module")
def kernel(researcher: HubSession) -> str:
    kid = researcher.start_kernel()
    researcher.kernel_info(kid)
    return kid


def test_the_kernel_has_no_network_at_all(workbench: dict[str, Any], researcher: HubSession, kernel: str) -> None:
    ports = workbench["ports"]
    attempts = {
        f"tcp-loopback-{name}": f"socket.create_connection(('127.0.0.1', {port}), timeout=3)"
        for name, port in ports.items()
    }
    attempts["tcp-public-address"] = "socket.create_connection(('1.1.1.1', 443), timeout=3)"
    attempts["tcp-public-ipv6"] = "socket.create_connection(('2606:4700:4700::1111', 443), timeout=3)"
    attempts["dns"] = "socket.getaddrinfo('example.org', 443)"
    attempts["dns-localhost"] = f"socket.create_connection(('localhost', {ports['hub']}), timeout=3)"
    attempts["hub-api"] = (f"urllib.request.urlopen('http://127.0.0.1:{ports['hub']}/hub/api/users', "
                           "timeout=3).read()")
    attempts["udp-send"] = "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))"
    verdicts = _run_attempts(researcher, kernel, attempts)
    leaked = {k: v for k, v in verdicts.items() if not v["refused"]}
    assert not leaked, leaked


def test_the_kernel_sees_no_files_but_its_workspace(workbench: dict[str, Any], researcher: HubSession,
                                                   kernel: str) -> None:
    demo = Path(workbench["dir"])
    hub_state = demo / "stack" / "hub"
    attempts = {
        "node-store-index": f"open({str(demo / 'nodes' / 'a' / 'node.sqlite')!r}, 'rb').read(16)",
        "node-objects": f"os.listdir({str(demo / 'nodes' / 'a' / 'objects')!r})",
        "vault": f"open({str(demo / 'nodes' / 'a' / 'private' / 'vault.sqlite')!r}, 'rb').read(16)",
        "provider-key": f"open({str(demo / 'keys' / 'a.key')!r}).read()",
        "node-ledger": f"os.listdir({str(demo / 'nodes' / 'a' / 'ledger')!r})",
        "synthetic-originals": f"os.listdir({str(demo / 'synthetic')!r})",
        "hub-secrets": f"os.listdir({str(demo / 'stack' / 'secrets')!r})",
        "hub-database": f"open({str(hub_state / 'jupyterhub.sqlite')!r}, 'rb').read(16)",
        "another-workspace": f"os.listdir({str(hub_state / 'workspaces' / 'annotator')!r})",
        "another-workspace-relative": "os.listdir('/workspace/../annotator')",
        # its own connection file is there (bound alone); nothing else of the server's runtime
        "server-runtime": "(lambda fs: fs if [f for f in fs if KERNEL not in f and not f.startswith('k-')] "
                          "or len([f for f in fs if f.startswith('k-')]) > 1 else 1/0)"
                          "(os.listdir('/run/incisive/jupyter'))",
        "server-runtime-parent": "[f for f in os.listdir('/run/incisive') if f not in ('jupyter', "
                                 "'gateway.sock')] or 1/0",
        "gateway-ledger": "os.listdir('/run/incisive/gateway-ledger')",
        # the Python installation under /root is bound read-only; nothing else of /root is there
        "host-root-home": "[f for f in os.listdir('/root') if f != '.pyenv'] or 1/0",
        "process-environ": "open('/proc/1/environ', 'rb').read()",
        "parent-processes": "[p for p in os.listdir('/proc') if p.isdigit() and int(p) > 2] or 1/0",
        "write-outside": "open('/usr/local/pwned', 'w').write('x')",
    }
    researcher.execute(kernel, f"KERNEL = {kernel!r}")
    other = researcher.start_kernel()  # a second kernel's files must not show either
    researcher.kernel_info(other)
    verdicts = _run_attempts(researcher, kernel, attempts)
    leaked = {k: v for k, v in verdicts.items() if not v["refused"]}
    assert not leaked, leaked
    researcher.api("DELETE", f"/api/kernels/{other}")


def test_no_secret_reaches_the_kernel_environment(workbench: dict[str, Any], researcher: HubSession,
                                                  kernel: str) -> None:
    secrets_dir = Path(workbench["dir"]) / "stack" / "secrets"
    secrets = [p.read_text().strip() for p in secrets_dir.iterdir() if p.name.startswith("hub-")]
    assert len(secrets) >= 2
    result = researcher.execute(kernel, "import os, json; print(json.dumps(dict(os.environ)))")
    env = json.loads(result.stdout.strip().splitlines()[-1])
    assert not [k for k in env if k.startswith(("JUPYTERHUB", "JPY_API")) or "TOKEN" in k or "SECRET" in k]
    flat = json.dumps(env)
    assert not [s for s in secrets if s in flat]
    assert "eyJ" not in flat  # no JWT (access, ID or refresh token) of any kind
    assert env.get("INCISIVE_GATEWAY") == "/run/incisive/gateway.sock"


def test_download_paths_of_the_server_are_refused(researcher: HubSession) -> None:
    # a binary "image" and a table in the workspace, as analysis code would leave them
    assert researcher.api("PUT", "/api/contents/scan.npy", json={
        "type": "file", "format": "base64", "content": "k05VTVBZAQB2AHsnZGVzY3InOiAnPGY4Jywg"}).status_code in (403, 201, 200)
    researcher.api("PUT", "/api/contents/cohort.csv",
                   json={"type": "file", "format": "text", "content": "patient,age\nPSN-1,63\n"})
    researcher.api("PUT", "/api/contents/analysis.ipynb", json={"type": "notebook", "content": {
        "cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}})
    refused = {
        "files": ("GET", "/files/cohort.csv"),
        "files-download": ("GET", "/files/cohort.csv?download=1"),
        "contents-base64": ("GET", "/api/contents/cohort.csv?format=base64&type=file"),
        "nbconvert": ("GET", "/nbconvert/html/analysis.ipynb?download=true"),
        "nbconvert-script": ("GET", "/nbconvert/script/analysis.ipynb"),
        "api-nbconvert": ("GET", "/api/nbconvert"),
        "view": ("GET", "/view/cohort.csv"),
        "terminals-api": ("POST", "/api/terminals"),
        "terminals-page": ("GET", "/terminals/1"),
    }
    answers = {name: researcher.api(method, path).status_code for name, (method, path) in refused.items()}
    assert all(code in (403, 404) for code in answers.values()), answers
    assert answers["files"] == 403 and answers["contents-base64"] == 403 and answers["view"] == 403
    # what the workbench needs still works: the notebook and the table as text
    assert researcher.api("GET", "/api/contents/analysis.ipynb").status_code == 200
    assert researcher.api("GET", "/api/contents/cohort.csv?format=text&type=file").status_code == 200


def _gateway_ledger(workbench: dict[str, Any], user: str) -> list[Any]:
    path = Path(workbench["dir"]) / "stack" / "hub" / "runtime" / user / "gateway-ledger"
    with Ledger.open(path, read_only=True) as ledger:
        return [e.event for e in ledger.entries()]


def _node_ledger(workbench: dict[str, Any], site: str, actor: str) -> list[Any]:
    with Ledger.open(Path(workbench["dir"]) / "nodes" / site, read_only=True) as ledger:
        return [e.event for e in ledger.entries() if e.event.actor == actor]


def test_the_gateway_refuses_destinations_outside_the_allowed_set_and_ledgers_them(
        workbench: dict[str, Any], researcher: HubSession, kernel: str) -> None:
    code = textwrap.dedent("""
        import httpx, json
        c = httpx.Client(transport=httpx.HTTPTransport(uds="/run/incisive/gateway.sock"), base_url="http://gateway")
        out = {}
        for name, path in [("unknown-node", "/nodes/evil/healthz"), ("absolute-url", "http://example.org/"),
                           ("other-prefix", "/hub/api/users"), ("traversal", "/broker/../nodes/x"),
                           ("encoded-traversal", "/nodes/hospital-a/%2e%2e/%2e%2e/etc/passwd")]:
            try:
                r = c.get(path)
                out[name] = r.status_code
            except Exception as exc:
                out[name] = type(exc).__name__
        print(json.dumps(out))
    """)
    result = researcher.execute(kernel, code)
    assert result.error is None, result.error
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(a in (400, 403, 404) or isinstance(a, str) for a in answers.values()), answers
    assert answers["unknown-node"] == 403 and answers["other-prefix"] == 403
    denied = [e for e in _gateway_ledger(workbench, "researcher") if e.outcome.decision == "denied"]
    assert any("evil" in e.resource or "evil" in json.dumps(dict(e.details)) for e in denied)


def test_train_only_pixels_are_refused_through_the_gateway_and_ledgered_at_the_node(
        workbench: dict[str, Any], researcher: HubSession, kernel: str) -> None:
    from incisive_lab.node.store import NodeStore

    with NodeStore.open(Path(workbench["dir"]) / "nodes" / "b") as store:
        study = next(iter(store.index.studies()))
        series = next(iter(store.index.instances(study_uid=study.study_uid))).series_uid
    code = textwrap.dedent(f"""
        from incisive_lab import Workbench
        wb = Workbench(purpose="ai-development")
        try:
            wb.fetch_series("hospital-b", {study.study_uid!r}, {series!r}, progress=False)
        except PermissionError as exc:
            print("REFUSED", exc)
        else:
            print("LEAKED")
    """)
    result = researcher.execute(kernel, code)
    assert result.error is None, result.error
    assert result.stdout.startswith("REFUSED"), result.text
    assert "site-b" in result.stdout or "train" in result.stdout
    denied = [e for e in _node_ledger(workbench, "b", "user:researcher") if e.outcome.decision == "denied"]
    assert any(study.study_uid in (e.resource + json.dumps(dict(e.details))) for e in denied)


def test_links_the_kernel_plants_do_not_lead_the_server_out_of_the_workspace(
        researcher: HubSession, kernel: str) -> None:
    # the kernel cannot read the server's files, but it can make links the server would follow
    targets = {"env-link": "/proc/self/environ", "secret-link": "/run/incisive/jupyter/jupyter_cookie_secret",
               "gateway-config-link": "/etc/incisive/gateway.json", "runtime-link": "/run/incisive"}
    code = "import os\n" + "\n".join(
        f"os.path.lexists('/workspace/{n}') or os.symlink({t!r}, '/workspace/{n}')" for n, t in targets.items())
    result = researcher.execute(kernel, code)
    assert result.error is None, result.error
    for name in targets:
        for query in ("", "?format=text&type=file", "?content=1"):
            resp = researcher.api("GET", f"/api/contents/{name}{query}")
            assert resp.status_code in (403, 404), (name, query, resp.status_code, resp.text[:200])
            assert "JUPYTERHUB" not in resp.text and "broker" not in resp.text
    listing = researcher.api("GET", "/api/contents/").json()
    assert not {c["name"] for c in listing["content"]} & set(targets)
