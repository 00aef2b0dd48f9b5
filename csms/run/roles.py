"""Find the roles other packages provide (the ingest role) through the ``csms.roles`` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import cast

from schemas.roles import IngestRole


class RoleNotFoundError(LookupError):
    """No installed package provides the role (is the project installed?)."""


def load_role(name: str) -> object:
    found = entry_points(group="csms.roles", name=name)
    for ep in found:
        return cast(object, ep.load())
    raise RoleNotFoundError(f"no package provides the {name!r} role; reinstall the project (pip install -e .)")


def load_ingest_role() -> IngestRole:
    return cast(IngestRole, load_role("ingest"))
