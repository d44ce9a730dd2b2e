"""INCISIVE Lab's JupyterHub parts: the OIDC/eIDAS authenticator, the bubblewrap sandbox
spawner, hub events written to the ledger, and the hub's settings file.

``hub/jupyterhub_config.py`` wires them together from the JSON file named by
``INCISIVE_HUB_CONFIG`` (see ``docs/hub.md``).
"""

from .authenticator import IncisiveAuthenticator, LoginRefused, TokenHandler
from .events import HubLedger, log_request
from .settings import HubSettings, SettingsError, load_settings
from .spawner import SandboxError, SandboxSpawner

__all__ = [
    "HubLedger",
    "HubSettings",
    "IncisiveAuthenticator",
    "LoginRefused",
    "SandboxError",
    "SandboxSpawner",
    "SettingsError",
    "TokenHandler",
    "load_settings",
    "log_request",
]
