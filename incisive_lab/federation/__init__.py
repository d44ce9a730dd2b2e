"""The federation: the broker that fans queries out to the nodes, and the federated catalogue.

* :mod:`~incisive_lab.federation.config`: the strict node list (JSON or TOML).
* :mod:`~incisive_lab.federation.catalogue`: node catalogues merged into one HealthDCAT-AP
  ``dcat:Catalog``; faceted search with facet counts (pure).
* :mod:`~incisive_lab.federation.broker`: the parallel fan-out with per-node timeouts and
  statuses, the relayed-count checks (floors only go up).
* :mod:`~incisive_lab.federation.service`: the broker's HTTP service
  (``incisive-lab broker serve``). See ``docs/broker.md``.

Examples
--------
>>> from incisive_lab.federation import load_config, merge, parse_search, search
>>> config = load_config("nodes.toml")                       # doctest: +SKIP
"""

from __future__ import annotations

from incisive_lab.federation.broker import (
    ANSWER_FORMAT,
    Broker,
    BrokerError,
    NodeResult,
    check_item,
)
from incisive_lab.federation.catalogue import (
    CatalogueError,
    NodeCatalogue,
    SearchQuery,
    merge,
    parse_search,
    search,
)
from incisive_lab.federation.config import (
    BrokerConfig,
    ConfigError,
    NodeConfig,
    load_config,
    parse_config,
)

__all__ = [
    "ANSWER_FORMAT",
    "Broker",
    "BrokerConfig",
    "BrokerError",
    "CatalogueError",
    "ConfigError",
    "NodeCatalogue",
    "NodeConfig",
    "NodeResult",
    "SearchQuery",
    "check_item",
    "load_config",
    "merge",
    "parse_config",
    "parse_search",
    "search",
]
