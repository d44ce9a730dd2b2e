"""INCISIVE Lab: a research workbench for a federated European repository of cancer images.

The library holds every service and the notebook API; see ``docs/`` for the guides. In a
workbench kernel, start with :class:`Workbench`::

    from incisive_lab import Workbench
    wb = Workbench(purpose="ai-development")
"""

from typing import TYPE_CHECKING, Any

from incisive_lab.errors import IncisiveLabError

if TYPE_CHECKING:
    from incisive_lab.client import Workbench

__version__ = "0.1.0"

__all__ = ["IncisiveLabError", "Workbench", "__version__"]


def __getattr__(name: str) -> Any:
    # the notebook API is imported on first use: services and the CLI do not need it
    if name == "Workbench":
        from incisive_lab.client import Workbench

        return Workbench
    raise AttributeError(f"module 'incisive_lab' has no attribute {name!r}")
