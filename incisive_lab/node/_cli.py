"""Sub-commands: ``ingest`` (a provider's data into its node) and ``node serve`` (its service)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    """Add ``ingest`` to the ``incisive-lab`` parser."""
    p = sub.add_parser(
        "ingest",
        help="curate, de-identify and store a provider's DICOM and clinical spreadsheet in its node",
        description="Run the curation checks on the raw input, de-identify it (pseudonymise for federated "
        "hosting, anonymise for central), convert the clinical spreadsheet to FHIR R4B and store everything "
        "in the node directory, with the dataset's HealthDCAT-AP record and ledger entries. The same input "
        "again adds nothing; an interrupted run is completed by the next one. Exit status: 0 done "
        "(quarantined items are reported, not failures), 1 some files failed, 2 bad arguments or input.",
    )
    p.add_argument("--node-dir", required=True, metavar="DIR", help="the node directory (created on first use)")
    p.add_argument("--dataset", required=True, metavar="NAME", help="dataset name (lower case, digits, . _ -)")
    p.add_argument("--dicom", required=True, metavar="SRC", help="folder of raw DICOM files (any layout)")
    p.add_argument("--clinical", metavar="FILE.xlsx", help="clinical spreadsheet in the project's template")
    p.add_argument("--hosting", required=True, choices=("federated", "central"),
                   help="federated: stays in this node, pseudonymised (reversible by the provider); "
                   "central: anonymised (irreversible) for the central node")
    p.add_argument("--secret-file", metavar="KEY", help="the provider's secret (federated hosting)")
    p.add_argument("--removal-key", metavar="KEY", help="central hosting: the provider's secret file, used only "
                   "to compute each patient's removal handle (docs/central-removal.md); without it, centrally "
                   "hosted patients cannot be removed when they withdraw")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="processes (default: %(default)s)")
    p.add_argument("--title", help="dataset title for the catalogue record")
    p.add_argument("--description", help="dataset description for the catalogue record")
    p.add_argument("--country", metavar="CC", help="ISO 3166-1 alpha-2 country of the provider (e.g. GR)")
    p.add_argument("--db-url", metavar="URL", help="postgresql+psycopg:// URL for the index and FHIR store "
                   "(default: SQLite in the node directory)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run)

    node = sub.add_parser("node", help="the node service (DICOMweb, FHIR, ledger) over a node directory")
    nsub = node.add_subparsers(dest="node_command", metavar="SUBCOMMAND")
    nsub.required = True
    s = nsub.add_parser(
        "serve",
        help="serve the node: DICOMweb and FHIR R4B, every request token-checked and ledgered",
        description="Serve DICOMweb (QIDO-RS, WADO-RS) and FHIR R4B over a node directory written by "
        "`incisive-lab ingest`, and the node's ledger. Every request but /healthz needs an OIDC access "
        "token (RFC 9068 JWT) from --issuer for --audience; refusals and accesses are ledgered. "
        "Settings may also come from INCISIVE_NODE_DIR, INCISIVE_ISSUER, INCISIVE_AUDIENCE, "
        "INCISIVE_MIN_LOA, INCISIVE_DB_URL, INCISIVE_JWKS_URL, INCISIVE_PACS_URL, INCISIVE_SECRET_FILE.",
    )
    s.add_argument("--node-dir", metavar="DIR", help="the node directory")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    s.add_argument("--port", type=int, default=8081, help="port (default: %(default)s)")
    s.add_argument("--issuer", metavar="URL", help="the OIDC issuer whose access tokens are accepted")
    s.add_argument("--audience", metavar="AUD", help="this node's resource identifier (the tokens' aud)")
    s.add_argument("--min-loa", choices=("low", "substantial", "high"), default=None,
                   help="lowest eIDAS level of assurance accepted (default: substantial)")
    s.add_argument("--jwks-url", metavar="URL", help="the issuer's JWKS (default: from its discovery document)")
    s.add_argument("--db-url", metavar="URL", help="postgresql+psycopg:// URL of the index and FHIR store")
    s.add_argument("--pacs-url", metavar="URL", help="serve images from this PACS's DICOMweb root (e.g. "
                   "Orthanc's http://pacs:8042/dicom-web) instead of the node's file store")
    s.add_argument("--secret-file", metavar="KEY", help="the provider's secret (the ingest's --secret-file): "
                   "STOW-RS screens annotations written back for the patients' original identifiers with it; "
                   "without it, pseudonymised studies accept no annotations")
    s.add_argument("--organisation", metavar="ORG", help="the provider's organisation (the tokens' "
                   "schac_home_organization): only its stewards act as this node's stewards; without it, "
                   "any steward of the issuer does (a single-organisation issuer only)")
    s.add_argument("--central-url", metavar="URL", help="the central node's base URL: a withdrawal recorded "
                   "here also asks it to remove the patient's centrally hosted data (needs --secret-file; "
                   "docs/central-removal.md)")
    s.set_defaults(func=_serve)


def _run(args: argparse.Namespace) -> int:
    from incisive_lab.node.ingest import ingest

    summary = ingest(
        args.node_dir, dataset=args.dataset, dicom=args.dicom, clinical=args.clinical, hosting=args.hosting,
        secret_file=args.secret_file, jobs=args.jobs, title=args.title, description=args.description,
        country=args.country, db_url=args.db_url, removal_key=args.removal_key,
    )
    print(json.dumps(summary.as_json(), indent=1) if args.json else summary.text())
    return summary.exit_code


def _serve(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import uvicorn

    from incisive_lab.node.service import ServiceSettings, create_app

    settings = ServiceSettings.from_env(
        node_dir=Path(args.node_dir) if args.node_dir else None, issuer=args.issuer, audience=args.audience,
        min_loa=args.min_loa, jwks_url=args.jwks_url, db_url=args.db_url, pacs_url=args.pacs_url, host=args.host,
        port=args.port, secret_file=Path(args.secret_file) if args.secret_file else None,
        organisation=args.organisation, central_url=args.central_url,
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info", access_log=False)
    return 0
