"""The project's roles and levels of assurance, and how IdP claims map onto them.

Both mappings fail closed: an IdP group or role name that is not configured maps to no
role, and an ``acr`` value that is not a known eIDAS level counts as too low.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum, StrEnum
from types import MappingProxyType

__all__ = ["EIDAS_LOA_URIS", "LoA", "Role", "RoleMapper"]


class Role(StrEnum):
    """What a person may do in INCISIVE Lab (see ``DESIGN.md`` §2)."""

    RESEARCHER = "researcher"
    """Discovers data, queries cohorts, trains models, requests exports."""
    ANNOTATOR = "annotator"
    """Views images and writes annotations (DICOM SEG/SR/KOS) back to nodes."""
    STEWARD = "steward"
    """Manages a provider's data: sharing terms, consent, grants, airlock approvals."""
    AUDITOR = "auditor"
    """Reads ledgers and access reports."""
    ADMIN = "admin"
    """Operates the services."""


class LoA(IntEnum):
    """eIDAS levels of assurance (Regulation (EU) 910/2014, Art. 8), ordered.

    Examples
    --------
    >>> LoA.parse("substantial") < LoA.HIGH
    True
    >>> LoA.from_acr("http://eidas.europa.eu/LoA/high")
    <LoA.HIGH: 3>
    """

    LOW = 1
    SUBSTANTIAL = 2
    HIGH = 3

    @property
    def uri(self) -> str:
        """The ``acr`` value that asserts this level."""
        return f"http://eidas.europa.eu/LoA/{self.name.lower()}"

    @classmethod
    def parse(cls, value: LoA | str) -> LoA:
        """A level from a :class:`LoA`, its name (``"substantial"``) or its URI.

        Raises
        ------
        ValueError
            Anything else.
        """
        if isinstance(value, LoA):
            return value
        text = value.strip()
        for level in cls:
            if text.lower() == level.name.lower() or text == level.uri:
                return level
        raise ValueError(f"unknown eIDAS level of assurance {value!r} (low, substantial, high)")

    @classmethod
    def from_acr(cls, acr: object, extra: Mapping[str, LoA] | None = None) -> LoA | None:
        """The level an ``acr`` claim asserts, or ``None`` if it asserts no known level.

        Parameters
        ----------
        acr
            The claim's value (anything a token may carry).
        extra
            Further ``acr`` values the deployment's IdP uses, mapped to levels.
        """
        if not isinstance(acr, str):
            return None
        for level in cls:
            if acr == level.uri:
                return level
        if extra is not None:
            return extra.get(acr)
        return None


#: The eIDAS ``acr`` URIs, lowest first.
EIDAS_LOA_URIS: tuple[str, ...] = tuple(level.uri for level in LoA)


class RoleMapper:
    """Maps IdP role and group names to :class:`Role` values; unknown names map to nothing.

    By default a name maps to a role when it *is* the role's value (``"steward"``) or a
    group path under one of ``group_prefixes`` ending in it (``"/incisive/steward"``,
    Keycloak's full group path). Matching is exact and case-sensitive.

    Parameters
    ----------
    names
        Extra IdP names mapped to one role or several (e.g.
        ``{"CN=Data Stewards,OU=Radiology": Role.STEWARD}``).
    group_prefixes
        Group path prefixes under which ``<prefix><role>`` maps to that role.
    exact_names
        Whether the roles' own values are accepted as names (default ``True``).

    Examples
    --------
    >>> mapper = RoleMapper(names={"radiologists": Role.ANNOTATOR})
    >>> sorted(mapper.map(["researcher", "/incisive/auditor", "radiologists", "root", "Admin"]))
    [<Role.ANNOTATOR: 'annotator'>, <Role.AUDITOR: 'auditor'>, <Role.RESEARCHER: 'researcher'>]
    """

    def __init__(
        self,
        names: Mapping[str, Role | str | Iterable[Role | str]] | None = None,
        *,
        group_prefixes: Iterable[str] = ("/incisive/",),
        exact_names: bool = True,
    ) -> None:
        table: dict[str, frozenset[Role]] = {}
        prefixes = tuple(group_prefixes)
        for role in Role:
            if exact_names:
                table[role.value] = frozenset({role})
            for prefix in prefixes:
                table[prefix + role.value] = frozenset({role})
        for name, target in (names or {}).items():
            targets = [target] if isinstance(target, str) else list(target)
            roles = frozenset(Role(t) for t in targets)  # ValueError on an unknown role
            table[name] = table.get(name, frozenset()) | roles
        self._table = MappingProxyType(table)

    @property
    def table(self) -> Mapping[str, frozenset[Role]]:
        """Every accepted IdP name and the roles it grants (read-only)."""
        return self._table

    def map(self, names: Iterable[str]) -> frozenset[Role]:
        """The roles granted by ``names``; names not in :attr:`table` grant nothing."""
        roles: set[Role] = set()
        for name in names:
            roles |= self._table.get(name, frozenset())
        return frozenset(roles)

    def __repr__(self) -> str:
        return f"RoleMapper({len(self._table)} names)"
