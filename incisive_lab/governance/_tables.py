"""Tables of the governance layer in the node database (registered on the node's metadata)."""

from __future__ import annotations

from incisive_lab.node._db import metadata  # noqa: F401  (tables are added to the node's schema)
