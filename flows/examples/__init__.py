"""Example flows shipped with voxgate (restaurant booking, appointment reminder, phone menu, FAQ agent)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["example_flows"]


def example_flows() -> list[dict[str, Any]]:
    """The example flow documents, as fresh dicts, sorted by id."""
    docs = [
        json.loads(entry.read_text(encoding="utf-8"))
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(".json")
    ]
    return sorted(docs, key=lambda d: d["id"])
