"""Flower's deployment engine as real local processes: a SuperLink and SuperNodes on
loopback run a small ServerApp/ClientApp written here, first insecure, then with TLS and
SuperNode authentication from generated keys (a registered node takes part, a node with an
unregistered key or no key is refused). Plus the key material's properties."""

from __future__ import annotations

import ipaddress
import json
import stat
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from incisive_lab.fl._pki import NodeKey, Pki
from incisive_lab.fl.deploy import (
    Control,
    FlowerCliError,
    SuperLink,
    SuperNode,
    SuperNodeRefused,
    _children_of,
    run_status,
    submit,
    wait,
)

pytest.importorskip("flwr")

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "deployprobe"
version = "1.0.0"
description = "A probe app for the deployment tests"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "incisive-lab-tests"

[tool.flwr.app.components]
serverapp = "deployprobe.server:app"
clientapp = "deployprobe.client:app"

[tool.flwr.app.config]
out = ""
greeting = "hello"
hold = 0
"""

CLIENT = '''\
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer with what this node was configured with and what it was sent."""
    cfg = dict(context.node_config)
    answer = {"greeting": str(msg.content["q"]["greeting"]),
              "node-config": __import__("json").dumps(cfg, sort_keys=True)}
    return Message(RecordDict({"a": ConfigRecord(answer)}), reply_to=msg)
'''

SERVER = '''\
import json
import os
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """One query to every connected node; the replies go to the `out` file."""
    cfg = context.run_config
    time.sleep(float(cfg["hold"]))
    nodes = sorted(grid.get_node_ids())
    started = time.monotonic()
    msgs = [Message(RecordDict({"q": ConfigRecord({"greeting": cfg["greeting"]})}),
                    dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=120))
    took = time.monotonic() - started
    doc = {"nodes": nodes, "seconds": took, "replies": {}}
    for r in replies:
        if r.has_error():
            doc["replies"][str(r.metadata.src_node_id)] = {"error": r.error.reason}
        else:
            a = r.content["a"]
            doc["replies"][str(r.metadata.src_node_id)] = {
                "greeting": a["greeting"], "node-config": json.loads(a["node-config"])}
    out = Path(cfg["out"])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, out)
'''


def _write_app(root: Path) -> Path:
    app = root / "app"
    (app / "deployprobe").mkdir(parents=True)
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "deployprobe" / "__init__.py").write_text("")
    (app / "deployprobe" / "client.py").write_text(textwrap.dedent(CLIENT))
    (app / "deployprobe" / "server.py").write_text(textwrap.dedent(SERVER))
    return app


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_app(tmp_path_factory.mktemp("probe-app"))


# --- key material -----------------------------------------------------------------------


def test_pki_certificate_names_loopback_and_keys_are_private(tmp_path: Path) -> None:
    pki = Pki.generate(tmp_path / "pki")
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (pki.ca_key, pki.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    assert not list(pki.directory.glob(".*.tmp"))          # atomic writes leave nothing behind
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        Pki.generate(tmp_path / "pki")
    assert Pki.open(tmp_path / "pki") == pki
    pki.server_key.chmod(0o644)
    with pytest.raises(PermissionError, match="0600"):
        Pki.open(tmp_path / "pki")


def test_node_key_is_what_flwr_loads(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    key = NodeKey.generate(tmp_path / "keys", "site-a")
    assert stat.S_IMODE(key.private_key.stat().st_mode) == 0o600
    private = serialization.load_ssh_private_key(key.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    # the exact loader `flwr supernode register` uses, and the form the SuperLink stores
    assert try_load_public_key(key.public_key) == key.public_pem()
    with pytest.raises(FileExistsError):
        NodeKey.generate(tmp_path / "keys", "site-a")
    with pytest.raises(ValueError, match="name"):
        NodeKey.generate(tmp_path / "keys", "../escape")
    assert NodeKey.open(tmp_path / "keys", "site-a") == key


def test_bad_settings_fail_loudly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"node_auth.*tls"):
        SuperLink(tmp_path / "link", node_auth=True)
    with pytest.raises(ValueError, match=r"node_config.*'bad key'"):
        SuperNode("127.0.0.1:1", tmp_path / "n", node_config={"bad key": 1})
    with pytest.raises(ValueError, match=r"node_config.*list"):
        SuperNode("127.0.0.1:1", tmp_path / "n", node_config={"k": [1]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="superlink_address"):
        SuperNode("http://127.0.0.1:1", tmp_path / "n")
    with pytest.raises(FileNotFoundError, match="auth_key"):
        SuperNode("127.0.0.1:1", tmp_path / "n", auth_key=tmp_path / "missing.key")


# --- real processes ---------------------------------------------------------------------


def _stopped(*services: SuperLink | SuperNode) -> None:
    for s in services:
        s.stop()
        assert not s.alive()


@pytest.fixture(scope="module")
def insecure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SuperLink, list[SuperNode]]]:
    root = tmp_path_factory.mktemp("insecure")
    link = SuperLink(root / "link").start()
    nodes: list[SuperNode] = []
    try:
        for site, extra in (("a", 7), ("b", 8)):
            nodes.append(SuperNode(link.fleet_address, root / f"node-{site}", node_config={
                "node-name": site, "node-dir": str(root / f"store {site}"),
                "issuer": 'https://idp.example/realms/"x"', "rounds-cap": extra,
                "strict": True}).start())
        yield link, nodes
    finally:
        _stopped(*nodes, link)


def test_insecure_loopback_run_end_to_end(insecure: tuple[SuperLink, list[SuperNode]],
                                          app_dir: Path, tmp_path: Path) -> None:
    link, nodes = insecure
    out = tmp_path / "result.json"
    ids = [n.node_id for n in nodes if n.node_id is not None]
    assert len(ids) == 2
    with link.control() as control:
        assert sorted(control.wait_for_nodes(2)) == sorted(ids)
        run_id = control.submit(app_dir, {"out": str(out), "greeting": "hi there"})
        status = control.wait(run_id, timeout=120)
    assert status.ok, (status, link.process.tail())
    doc = json.loads(out.read_text())
    assert sorted(doc["nodes"]) == sorted(ids)
    by_id = {int(k): v for k, v in doc["replies"].items()}
    assert set(by_id) == set(ids)
    for node, node_id in zip(nodes, ids, strict=True):
        reply = by_id[node_id]
        assert reply["greeting"] == "hi there"
        # node config arrives typed, with spaces and quotes intact
        assert reply["node-config"] == node.node_config
    assert status.serverapp_seconds > 0 and status.clientapp_seconds >= 0
    print(f"\nflower overhead: run {status.elapsed:.1f} s (ServerApp), one query round to "
          f"2 nodes {doc['seconds']:.1f} s, ClientApp compute {status.clientapp_seconds:.2f} s")


def test_run_status_stop_and_errors(insecure: tuple[SuperLink, list[SuperNode]],
                                    app_dir: Path, tmp_path: Path) -> None:
    link, _ = insecure
    address = link.control_address
    run_id = submit(app_dir, address, {"out": str(tmp_path / "never.json"), "hold": 300})
    assert run_status(run_id, address).status in {"pending", "starting", "running"}
    with Control(address) as control:
        control.stop_run(run_id)
    final = wait(run_id, address, timeout=60, poll=1)
    assert final.finished and final.sub_status == "stopped" and not final.ok
    assert not (tmp_path / "never.json").exists()
    with Control(address) as control, pytest.raises(FlowerCliError):
        control.run_status(12345)
    with Control(address) as control, pytest.raises(FlowerCliError, match="Invalid run configuration"):
        control.submit(app_dir, {"not-a-key": 1})


def test_stop_ends_every_process(tmp_path: Path) -> None:
    link = SuperLink(tmp_path / "link").start()
    node = SuperNode(link.fleet_address, tmp_path / "node").start()
    pids = [p for s in (link, node) if (p := s.process.pid) is not None]
    detached = [c for pid in pids for c in _children_of(pid)]
    assert detached, "flwr starts a SuperExec beside each service"
    _stopped(node, link)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in detached):
        time.sleep(0.2)
    assert not [c for c in detached if Path(f"/proc/{c}/cmdline").exists()
                and Path(f"/proc/{c}/cmdline").read_bytes()]


def test_trusted_entities_refuse_a_locally_submitted_app(app_dir: Path, tmp_path: Path) -> None:
    """``--trusted-entities`` needs FAB signatures that only Flower Hub apps carry in 1.41: a
    SuperNode with it answers every message of a locally submitted app with an error."""
    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (tmp_path / "trusted.yaml").write_text(f"fpk_steward: '{public}'\n")
    out = tmp_path / "result.json"
    with SuperLink(tmp_path / "link") as link, \
            SuperNode(link.fleet_address, tmp_path / "node",
                      trusted_entities=tmp_path / "trusted.yaml") as node, link.control() as control:
        status = control.wait(control.submit(app_dir, {"out": str(out)}), timeout=120)
        assert "The FAB could not be verified" in node.log.read_text()
    assert status.ok                                   # the ServerApp itself ran to its end
    reply = json.loads(out.read_text())["replies"][str(node.node_id)]
    assert reply == {"error": "The FAB could not be verified."}


def test_tls_with_node_authentication(app_dir: Path, tmp_path: Path) -> None:
    pki = Pki.generate(tmp_path / "pki")
    keys = tmp_path / "keys"
    good, unknown = NodeKey.generate(keys, "hospital-a"), NodeKey.generate(keys, "intruder")
    link = SuperLink(tmp_path / "link", tls=pki, node_auth=True).start()
    started: list[SuperNode] = []
    try:
        with link.control() as control:
            registered = control.register_node(good, name="hospital-a")
            assert [n.node_id for n in control.nodes()] == [registered]

            node = SuperNode(link.fleet_address, tmp_path / "a", node_config={"node-name": "a"},
                             tls_root=pki.ca_cert, auth_key=good)
            started.append(node.start())
            assert node.node_id == registered

            # a key the SuperLink never registered: activation refused, the SuperNode exits
            with pytest.raises(SuperNodeRefused) as refused:
                started.append(SuperNode(link.fleet_address, tmp_path / "x", tls_root=pki.ca_cert,
                                         auth_key=unknown).start())
            assert refused.value.returncode not in (None, 0)
            assert "Failed to activate SuperNode" in refused.value.log_tail
            # no key at all: flwr makes one and tries to self-register, which auth forbids
            with pytest.raises(SuperNodeRefused):
                started.append(SuperNode(link.fleet_address, tmp_path / "y",
                                         tls_root=pki.ca_cert).start())
            link_log = link.log.read_text()
            assert "No SuperNode found with the given public key" in link_log
            assert unknown.public_pem().decode().splitlines()[1] in link_log.replace("\\n", "\n")

            # the Control API is HTTPS only: a plain-HTTP client gets nothing
            with Control(link.control_address) as plain, pytest.raises(FlowerCliError):
                plain.nodes()

            online = control.wait_for_nodes(1)
            assert online == [registered]
            out = tmp_path / "result.json"
            run_id = control.submit(app_dir, {"out": str(out)})
            status = control.wait(run_id, timeout=120)
        assert status.ok, (status, link.process.tail())
        doc = json.loads(out.read_text())
        assert doc["nodes"] == [registered]
        assert doc["replies"][str(registered)]["node-config"] == {"node-name": "a"}
    finally:
        _stopped(*started, link)
