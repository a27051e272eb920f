"""Graph checks of a flow: every node is reachable from the start and can lead to a way out."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from flows.schema import ANY_NODE_TYPES, TERMINAL_TYPES, edges_of
from flows.validate_issues import FlowIssue
from flows.validate_structure import RawFlow

__all__ = ["graph_issues"]


def graph_issues(flow: RawFlow) -> Iterator[FlowIssue]:
    """``unreachable`` and ``no_exit`` nodes (edges to unknown nodes are reported by the structure checks)."""
    edges: dict[str, list[str]] = {}
    can_exit: set[str] = set()
    for nid, i in flow.index.items():
        node = flow.nodes[i]
        kind = node.get("type")
        targets = [t for _, t in edges_of(node) if isinstance(t, str)]
        edges[nid] = [t for t in targets if t in flow.index]
        opaque = i in flow.broken or kind not in ANY_NODE_TYPES
        dangling = len(edges[nid]) < len(targets)  # already reported as unknown_node
        implicit_end = kind == "llm" and not node.get("on_max_turns")
        if opaque or kind in TERMINAL_TYPES or dangling or implicit_end:
            can_exit.add(nid)
    # Reverse reachability from the ways out: one breadth-first pass over the reversed edges, linear in
    # the size of the graph (a fixpoint loop here was quadratic: 50 s for 10,000 nodes).
    sources: dict[str, list[str]] = {}
    for nid, targets in edges.items():
        for target in targets:
            sources.setdefault(target, []).append(nid)
    pending = deque(can_exit)
    while pending:
        for source in sources.get(pending.popleft(), ()):
            if source not in can_exit:
                can_exit.add(source)
                pending.append(source)

    start = flow.doc.get("start")
    reachable: set[str] | None = None
    if isinstance(start, str) and start in flow.index:
        reachable = {start}
        queue = deque([start])
        while queue:
            for target in edges[queue.popleft()]:
                if target not in reachable:
                    reachable.add(target)
                    queue.append(target)
    for nid, i in sorted(flow.index.items(), key=lambda kv: kv[1]):
        if reachable is not None and nid not in reachable:
            yield FlowIssue(
                nid, f"nodes[{i}]", "unreachable", f"node {nid!r} cannot be reached from the start"
            )
        elif nid not in can_exit:
            yield FlowIssue(
                nid, f"nodes[{i}]", "no_exit", f"node {nid!r} never leads to an end or transfer node"
            )
