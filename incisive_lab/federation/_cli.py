"""Sub-command ``broker serve``: the federation's broker over a node list."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add ``broker`` to the ``incisive-lab`` parser."""
    broker = sub.add_parser("broker", help="the federation's broker: catalogue, federated counts, requests")
    bsub = broker.add_subparsers(dest="broker_command", metavar="SUBCOMMAND")
    bsub.required = True
    s = bsub.add_parser(
        "serve",
        help="serve the broker over the nodes of --nodes",
        description="Serve the federated catalogue (HealthDCAT-AP, faceted search), federated cohort counts "
        "fanned out to every node in parallel with a per-node timeout (per-node status ok/timeout/error, "
        "partial answers) and the access-request API. The caller's OIDC access token (RFC 9068 JWT for "
        "--audience) is verified here and forwarded to the nodes, which verify it again: configure the "
        "nodes with the same audience. Every federated query is written to the broker's ledger. "
        "See docs/broker.md.",
    )
    s.add_argument("--nodes", required=True, metavar="CONFIG",
                   help="the node list: a .toml or .json file (see docs/broker.md)")
    s.add_argument("--issuer", required=True, metavar="URL", help="the OIDC issuer whose access tokens are accepted")
    s.add_argument("--audience", required=True, metavar="AUD",
                   help="the federation's resource identifier (the tokens' aud; the nodes use the same)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    s.add_argument("--port", type=int, default=8090, help="port (default: %(default)s)")
    s.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="per-node timeout, replacing every timeout of the file (default: the file's, else 5)")
    s.add_argument("--floor", type=int, metavar="N",
                   help="broker floor: raises every node's small-count floor for relayed answers, never "
                   "lowers one (at least 3; default: the file's, else none)")
    s.add_argument("--catalogue-ttl", type=float, metavar="SECONDS",
                   help="seconds a node's catalogue is cached (default: the file's, else 30)")
    s.add_argument("--state-dir", metavar="DIR", help="the broker's state; its ledger goes in DIR/ledger/")
    s.add_argument("--ledger-dir", metavar="DIR", help="where the ledger goes instead (DIR/ledger/)")
    s.add_argument("--min-loa", choices=("low", "substantial", "high"), default="substantial",
                   help="lowest eIDAS level of assurance accepted (default: %(default)s)")
    s.add_argument("--jwks-url", metavar="URL", help="the issuer's JWKS (default: from its discovery document)")
    fl = s.add_argument_group("federated training (POST /fl/runs; see docs/fl.md)")
    fl.add_argument("--superlink", metavar="HOST:PORT",
                    help="the Flower SuperLink's Control API: training runs are submitted there (needs --state-dir)")
    fl.add_argument("--superlink-root-cert", metavar="PEM",
                    help="CA certificate of the SuperLink (TLS); without it the connection is insecure (loopback only)")
    fl.add_argument("--fl-in-process", metavar="NODES.json",
                    help="run training in this process instead, with the ClientApp of each node of the file "
                    "({name: node config}): development only")
    s.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import uvicorn

    from incisive_lab.federation.config import load_config
    from incisive_lab.federation.service import BrokerSettings, create_app

    config = load_config(args.nodes).with_overrides(timeout=args.timeout, floor=args.floor,
                                                    catalogue_ttl=args.catalogue_ttl)
    settings = BrokerSettings(
        config=config, issuer=args.issuer, audience=args.audience,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        ledger_dir=Path(args.ledger_dir) if args.ledger_dir else None,
        min_loa=args.min_loa, jwks_url=args.jwks_url, host=args.host, port=args.port)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uvicorn.run(create_app(settings, training=_training(args)), host=settings.host, port=settings.port,
                log_level="warning", access_log=False)
    return 0


def _training(args: argparse.Namespace) -> Any:
    """``ledger -> Coordinator`` when training is configured, else ``None``."""
    import json
    from pathlib import Path

    from incisive_lab.errors import IncisiveLabError

    if not (args.superlink or args.fl_in_process):
        return None
    if args.superlink and args.fl_in_process:
        raise IncisiveLabError("--superlink and --fl-in-process exclude each other")
    if not args.state_dir:
        raise IncisiveLabError("federated training needs --state-dir (runs are kept in DIR/fl/runs/)")
    from incisive_lab.fl.coordinator import Coordinator, FlowerLauncher, InProcessLauncher

    launcher: Any
    if args.superlink:
        from incisive_lab.fl.app_dir import build_app_dir

        app_dir = build_app_dir(Path(args.state_dir) / "fl" / "app")
        launcher = FlowerLauncher(app_dir, args.superlink,
                                  tls_root=Path(args.superlink_root_cert) if args.superlink_root_cert else None)
    else:
        nodes = json.loads(Path(args.fl_in_process).read_text())
        if not isinstance(nodes, dict) or not all(isinstance(v, dict) for v in nodes.values()):
            raise IncisiveLabError(f"--fl-in-process {args.fl_in_process}: must map node names to node configs")
        launcher = InProcessLauncher(nodes)
    return lambda ledger: Coordinator(Path(args.state_dir) / "fl", launcher, ledger=ledger)
