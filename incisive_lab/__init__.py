"""INCISIVE Lab: a research workbench for a federated European repository of cancer images.

The library holds every service and the notebook API; see ``docs/`` for the guides.
"""

from incisive_lab.errors import IncisiveLabError

__version__ = "0.1.0"

__all__ = ["IncisiveLabError", "__version__"]
