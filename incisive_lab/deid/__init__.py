"""De-identification of DICOM (PS3.15) and clinical spreadsheets.

Two modes: **pseudonymize** (keyed by the provider's secret; the same patient always
gets the same pseudonym, in DICOM and in the spreadsheet; the provider, and only the
provider, can reverse it through the vault) and **anonymize** (a random salt per run,
no vault: irreversible, for the central node).

Quick use
---------
>>> from incisive_lab.deid import Profile, Secret, deidentify_tree   # doctest: +SKIP
>>> run = deidentify_tree("raw/", "deid/", profile=Profile(["retain-longitudinal-modified-dates"]),
...                       secret=Secret.from_file("provider.key"), vault="vault.sqlite", jobs=2)
>>> run.counts
{'ok': 1998, 'quarantined': 2, 'failed': 0, 'skipped': 0}

``Profile(...).describe_text()`` prints the conformance statement; :class:`LeakScanner`
checks output for known identifying strings.
"""

from incisive_lab.deid._engine import DeidError, Engine, FileResult, Quarantine
from incisive_lab.deid.batch import FileRecord, RunReport, deidentify_tree
from incisive_lab.deid.keys import Pseudonymizer, Secret, SecretError, write_secret_file
from incisive_lab.deid.profile import Decision, Mode, Option, Profile, ProfileError
from incisive_lab.deid.scanner import Finding, LeakScanner, audit
from incisive_lab.deid.vault import Vault, VaultError

__all__ = [
    "Decision",
    "DeidError",
    "Engine",
    "FileRecord",
    "FileResult",
    "Finding",
    "LeakScanner",
    "Mode",
    "Option",
    "Profile",
    "ProfileError",
    "Pseudonymizer",
    "Quarantine",
    "RunReport",
    "Secret",
    "SecretError",
    "Vault",
    "VaultError",
    "audit",
    "deidentify_tree",
    "write_secret_file",
]
