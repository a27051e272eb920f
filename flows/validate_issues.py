"""The records flow validation reports: one :class:`FlowIssue` per problem, raised together as an error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FlowIssue", "FlowValidationError", "field_path"]


@dataclass(frozen=True)
class FlowIssue:
    """One validation problem. ``code`` is stable and machine-readable; ``message`` is for people.

    ``node`` is the id of the node concerned (None for document-level problems); ``field`` is a path into
    the document such as ``nodes[3].next`` or ``start``.
    """

    node: str | None
    field: str
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used in API responses."""
        return asdict(self)


class FlowValidationError(ValueError):
    """A flow document failed validation; ``issues`` lists every problem found."""

    def __init__(self, issues: list[FlowIssue]) -> None:
        self.issues = issues
        summary = "; ".join(f"{i.field or '(document)'}: {i.message}" for i in issues[:5])
        more = f" (+{len(issues) - 5} more)" if len(issues) > 5 else ""
        super().__init__(f"invalid flow: {summary}{more}")

    def to_dicts(self) -> list[dict[str, Any]]:
        """Issues as JSON-ready dicts (``{"detail": error.to_dicts()}`` is the 422 body)."""
        return [i.to_dict() for i in self.issues]


def field_path(parts: Iterable[Any]) -> str:
    """A location as an issue's ``field``: ``("nodes", 3, "next")`` -> ``nodes[3].next``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
