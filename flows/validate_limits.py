"""The size caps of a flow document, checked by one cheap walk before any costly check runs."""

from __future__ import annotations

import math
from typing import Any

from flows.schema import MAX_NODES
from flows.validate_issues import FlowIssue, field_path

__all__ = ["MAX_DEPTH", "MAX_DOCUMENT_CHARS", "MAX_STRING_CHARS", "MAX_VALUES", "DocumentLimits"]


# Caps checked before any costly work, by one bounded walk of the document. Real flows are far inside them
# (the largest shipped example has ~300 values); they bound what one request can make the checker do.
MAX_DEPTH = 80  # nesting of objects and lists (a branch condition may nest up to 64 on its own)
MAX_VALUES = 100_000  # values in the whole document
MAX_STRING_CHARS = 100_000  # one string
MAX_DOCUMENT_CHARS = 2_000_000  # all strings (and keys) together


class DocumentLimits:
    """One bounded, iterative walk of the whole document: the size caps, and numbers JSON cannot hold.

    ``exceeded`` means a cap was hit and the document must not be checked further. It visits at most
    MAX_VALUES values, so it is cheap on any input, however large or deep.
    """

    def __init__(self, doc: dict[str, Any]) -> None:
        self.issues: list[FlowIssue] = []
        self.exceeded = False
        nodes = doc.get("nodes")
        if isinstance(nodes, list) and len(nodes) > MAX_NODES:
            self._cap("nodes", f"a flow has at most {MAX_NODES} nodes, this one has {len(nodes)}")
        else:
            self._walk(doc)

    def _cap(self, field: str, message: str) -> None:
        self.issues.append(FlowIssue(None, field, "too_large", message))
        self.exceeded = True

    def _walk(self, doc: dict[str, Any]) -> None:
        values = chars = 0
        stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]
        while stack:
            value, path = stack.pop()
            values += 1
            if values > MAX_VALUES:
                return self._cap("", f"a flow holds at most {MAX_VALUES} values")
            if isinstance(value, str):
                chars += len(value)
                if len(value) > MAX_STRING_CHARS:
                    self._cap(field_path(path), f"text longer than {MAX_STRING_CHARS} characters")
            elif isinstance(value, float) and not math.isfinite(value):
                self.issues.append(
                    FlowIssue(None, field_path(path), "invalid_number", "NaN and Infinity are not JSON")
                )
            elif isinstance(value, dict | list):
                if len(path) >= MAX_DEPTH:
                    return self._cap(field_path(path), f"nested deeper than {MAX_DEPTH} levels")
                if isinstance(value, list):
                    stack.extend((item, (*path, j)) for j, item in enumerate(value))
                    continue
                for key, item in value.items():
                    if not isinstance(key, str):
                        return self._cap(field_path(path), "object keys must be strings")
                    chars += len(key)
                    stack.append((item, (*path, key)))
            if chars > MAX_DOCUMENT_CHARS:
                return self._cap("", f"a flow holds at most {MAX_DOCUMENT_CHARS} characters of text")
        return None
