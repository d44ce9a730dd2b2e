"""Re-identification: the provider's tool, and always on the record.

Every lookup is written to the provider's node ledger *before* the answer is given:
one ``reidentify`` event per pseudonym (so the steward's "what happened to this
patient's data" report shows it), allowed when the vault knows the pseudonym, denied
otherwise; a secret that does not open the vault is ledgered as denied too.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

from incisive_lab.deid.keys import Secret, SecretError
from incisive_lab.deid.vault import Vault, VaultError

__all__ = ["reidentify"]

_RESOURCE_KIND = {"patient": "patient", "accession": "accession", "uid": "uid"}


def reidentify(
    pseudonyms: list[str],
    *,
    vault: str | os.PathLike[str],
    secret_file: str | os.PathLike[str],
    node_dir: str | os.PathLike[str],
    purpose: str,
    actor: str | None = None,
    case: str | None = None,
) -> list[dict[str, Any]]:
    """Resolve pseudonyms through the vault, writing each lookup to the node's ledger.

    Returns
    -------
    list of dict
        Per pseudonym: ``pseudonym``, ``found`` and, when found, ``original``.

    Raises
    ------
    SecretError, VaultError
        After ledgering the refusal, when the secret cannot open the vault.
    """
    from incisive_lab.ledger import Event, Ledger, Outcome

    who = actor or f"user:{getpass.getuser()}"
    vault_name = Path(vault).name
    with Ledger.open(node_dir) as ledger:
        try:
            secret = Secret.from_file(secret_file)
            with Vault(vault, secret) as v:
                found = v.lookup(pseudonyms)
        except (SecretError, VaultError) as exc:
            ledger.append(Event(kind="reidentify", actor=who, action="reidentify", resource=f"vault:{vault_name}",
                                purpose=purpose, outcome=Outcome.deny(str(exc)[:200]),
                                details={"count": 0, "case": case}))
            raise
        events = []
        for pseudonym, original in zip(pseudonyms, found, strict=True):
            kind = _RESOURCE_KIND.get(str(original.get("kind")), "pseudonym") if original else "pseudonym"
            events.append(Event(
                kind="reidentify", actor=who, action="reidentify", resource=f"{kind}:{pseudonym}",
                purpose=purpose,
                outcome=Outcome.allow("resolved by the provider's vault") if original else Outcome.deny("unknown pseudonym"),
                details={"pseudonym": pseudonym, "count": 1 if original else 0, "case": case},
            ))
        ledger.append_many(events)  # durable before anything is shown
    return [{"pseudonym": p, "found": f is not None, **({"original": f} if f else {})} for p, f in zip(pseudonyms, found, strict=True)]
