"""INCISIVE Lab's Jupyter server extension: download refusal and the kernel gateway.

Enabled by ``extensions/jupyter-config/jupyter_server_config.json``
(``ServerApp.jpserver_extensions``); see ``docs/extension.md``.
"""

from __future__ import annotations

from typing import Any

from .config import UnsafeServerConfig, check_routes, check_server
from .contents import RefusingContentsManager
from .extension import IncisiveLabServer
from .refusal import REFUSAL

__all__ = [
    "REFUSAL",
    "IncisiveLabServer",
    "RefusingContentsManager",
    "UnsafeServerConfig",
    "check_routes",
    "check_server",
]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "incisive_lab_server", "app": IncisiveLabServer}]


# The load function jupyter_server calls (it also finds it on the app class).
_load_jupyter_server_extension = IncisiveLabServer._load_jupyter_server_extension
