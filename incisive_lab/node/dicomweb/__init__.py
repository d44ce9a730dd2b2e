"""DICOMweb (PS3.18) request logic over the node store, free of any web framework.

The ASGI layer builds one :class:`DicomwebService` over the open
:class:`~incisive_lab.node.store.NodeStore` and calls one method per resource; see
``docs/dicomweb.md`` for the endpoints, the matching supported, the limits and errors.
"""

from incisive_lab.node.dicomweb._http import (
    Accessed,
    DicomwebError,
    DicomwebResponse,
    parse_accept,
)
from incisive_lab.node.dicomweb.qido import DEFAULT_LIMIT, MAX_LIMIT
from incisive_lab.node.dicomweb.service import DicomwebService

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "Accessed",
    "DicomwebError",
    "DicomwebResponse",
    "DicomwebService",
    "parse_accept",
]
