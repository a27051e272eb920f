"""The flow document format: pydantic v2 models and the JSON Schema derived from them.

A flow is a graph of typed nodes. Edges are plain fields holding node ids (``next``, ``on_failure``, ...), so a
document is easy to write by hand, diff and validate. These models check each document's *shape*; the checks
that need the whole graph (unknown targets, reachability, undefined variables) live in ``flows.validate``.
"""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ANY_NODE_TYPES",
    "BranchCase",
    "BranchNode",
    "Choice",
    "CollectKind",
    "CollectNode",
    "DtmfMenuNode",
    "DtmfOption",
    "EndNode",
    "Flow",
    "FlowSettings",
    "HttpNode",
    "LlmExit",
    "LlmNode",
    "MAX_NODES",
    "Node",
    "SayNode",
    "TransferNode",
    "edges_of",
    "flow_json_schema",
]

# Ids appear in events, logs and URLs; keep them boring.
SLUG = r"^[a-z0-9][a-z0-9_-]{0,63}$"
NODE_ID = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
# Variables are Jinja identifiers, so ``{{ party_size }}`` works without quoting.
VARIABLE = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# A phone number in E.164 form, or a SIP URI.
TRANSFER_TARGET = r"^(\+[1-9][0-9]{6,14}|sips?:[^\s]+)$"
EXIT_NAME = r"^[a-z][a-z0-9_]{0,39}$"

MAX_NODES = 500

# Names the runner provides to every template; flows cannot declare or collect into them.
BUILTIN_VARIABLES = frozenset({"now"})
RESERVED_NAMES = BUILTIN_VARIABLES | {"secrets"}

NodeId = Annotated[str, Field(pattern=NODE_ID, description="id of a node in this flow")]
Template = Annotated[str, Field(max_length=4000, description="Jinja2 template (sandboxed, strict)")]
VariableName = Annotated[str, Field(pattern=VARIABLE)]

CollectKind = Literal["number", "yes_no", "date", "time", "choice", "text", "regex"]


class _Model(BaseModel):
    # Unknown fields are errors: a typo such as "nxt" must not silently drop an edge.
    model_config = ConfigDict(extra="forbid")


class FlowSettings(_Model):
    """Per-flow conversation settings."""

    silence_reprompt_s: float = Field(
        8, gt=0, le=120, description="seconds of caller silence before a re-prompt"
    )
    max_reprompts: int = Field(2, ge=0, le=10, description="re-prompts before ending with reason no_input")
    max_call_s: float = Field(600, gt=0, le=86400, description="hard limit on the conversation length")
    language: str = Field("en", min_length=2, max_length=16)
    voice: str | None = None
    timezone: str = Field("UTC", description="IANA time zone for `now` and for parsing dates and times")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class SayNode(_Model):
    """Speak a templated text, then go on to ``next``."""

    id: NodeId
    type: Literal["say"]
    text: Template
    next: NodeId


class Choice(_Model):
    """One option of a ``choice`` collect, with words that also select it."""

    value: str = Field(min_length=1, max_length=200)
    synonyms: list[str] = Field(default_factory=list, max_length=50)


class CollectNode(_Model):
    """Ask a question and store the parsed answer in ``variable``."""

    id: NodeId
    type: Literal["collect"]
    prompt: Template
    variable: VariableName
    kind: CollectKind
    choices: list[Choice | str] = Field(default_factory=list, max_length=100)
    pattern: str | None = Field(None, max_length=500, description="regular expression, for kind regex")
    retry_prompt: Template | None = None
    max_retries: int = Field(2, ge=0, le=10)
    llm_fallback: bool = Field(
        True, description="ask the LLM to normalise an answer the deterministic parser did not understand"
    )
    next: NodeId
    on_failure: NodeId

    def choice_list(self) -> list[Choice]:
        """Choices with plain strings turned into :class:`Choice` objects."""
        return [c if isinstance(c, Choice) else Choice(value=c) for c in self.choices]


class LlmExit(_Model):
    """A way out of an ``llm`` node, picked by the model or by a trigger phrase."""

    name: str = Field(pattern=EXIT_NAME)
    description: str = Field("", max_length=500)
    next: NodeId
    phrases: list[str] = Field(default_factory=list, max_length=50)


class LlmNode(_Model):
    """A free conversation with the LLM until it (or a trigger phrase) picks an exit."""

    id: NodeId
    type: Literal["llm"]
    instructions: Template
    opening: Template | None = Field(None, description="said when the node is entered (optional)")
    exits: list[LlmExit] = Field(default_factory=list, max_length=20)
    max_turns: int = Field(6, ge=1, le=100)
    on_max_turns: NodeId | None = Field(
        None, description="where to go after max_turns; ends the call if unset"
    )
    max_tokens: int = Field(160, ge=16, le=2000, description="token budget of one model reply")


class BranchCase(_Model):
    """A JSONLogic condition and where to go when it holds."""

    when: Any = Field(description="JSONLogic expression over the flow variables")
    next: NodeId


class BranchNode(_Model):
    """Go to the first case whose condition holds, else ``default``. Says nothing."""

    id: NodeId
    type: Literal["branch"]
    cases: list[BranchCase] = Field(min_length=1, max_length=50)
    default: NodeId


class HttpNode(_Model):
    """Call an HTTP API (allow-listed hosts only) and save parts of its JSON answer."""

    id: NodeId
    type: Literal["http"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: Template
    headers: dict[str, Template] = Field(default_factory=dict)
    body: Any = Field(None, description="JSON body; every string in it is a template")
    timeout_s: float = Field(5, gt=0, le=60)
    retries: int = Field(1, ge=0, le=5)
    save: dict[VariableName, str] = Field(
        default_factory=dict, description='variable -> dotted path into the JSON response ("" = whole body)'
    )
    next: NodeId
    on_error: NodeId


class DtmfOption(_Model):
    """One keypad choice; ``label`` holds words a caller may say instead of pressing the key."""

    digit: str = Field(pattern=r"^[0-9*#]$")
    label: str = Field("", max_length=200)
    next: NodeId


class DtmfMenuNode(_Model):
    """A phone menu: press a key (or say its label)."""

    id: NodeId
    type: Literal["dtmf_menu"]
    prompt: Template
    options: list[DtmfOption] = Field(min_length=1, max_length=12)
    max_retries: int = Field(2, ge=0, le=10)
    on_failure: NodeId


class TransferNode(_Model):
    """Hand the call to a phone number or SIP URI; the conversation ends here."""

    id: NodeId
    type: Literal["transfer"]
    target: str = Field(pattern=TRANSFER_TARGET)
    handoff: Template = ""


class EndNode(_Model):
    """Say goodbye (optional) and hang up."""

    id: NodeId
    type: Literal["end"]
    text: Template | None = None
    reason: str = Field("completed", max_length=64)


Node = Annotated[
    SayNode | CollectNode | LlmNode | BranchNode | HttpNode | DtmfMenuNode | TransferNode | EndNode,
    Field(discriminator="type"),
]
ANY_NODE_TYPES = ("say", "collect", "llm", "branch", "http", "dtmf_menu", "transfer", "end")


class Flow(_Model):
    """A whole flow document."""

    id: str = Field(pattern=SLUG)
    name: str = Field(min_length=1, max_length=200)
    version: int = Field(1, ge=1)
    description: str = Field("", max_length=2000)
    start: NodeId
    variables: dict[VariableName, Any] = Field(default_factory=dict)
    settings: FlowSettings = Field(default_factory=FlowSettings)
    nodes: list[Node] = Field(min_length=1, max_length=MAX_NODES)

    def node(self, node_id: str) -> Node:
        """The node with this id (KeyError if none)."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def node_map(self) -> dict[str, Node]:
        """Nodes by id (the first one wins if ids repeat; validation reports repeats)."""
        out: dict[str, Node] = {}
        for node in self.nodes:
            out.setdefault(node.id, node)
        return out


# Which fields of each node type are edges. Paths use the same "field[index].sub" form as validation issues.
EDGE_FIELDS: dict[str, tuple[str, ...]] = {
    "say": ("next",),
    "collect": ("next", "on_failure"),
    "llm": ("exits[].next", "on_max_turns"),
    "branch": ("cases[].next", "default"),
    "http": ("next", "on_error"),
    "dtmf_menu": ("options[].next", "on_failure"),
    "transfer": (),
    "end": (),
}
TERMINAL_TYPES = frozenset({"end", "transfer"})


def edges_of(node: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(field path, target)`` for every edge of a raw node dict; tolerant of malformed documents.

    Works on dicts rather than models so validation can still follow the edges of a node that failed its
    schema check. Missing optional edges are skipped; a present non-string target is returned as is.
    """
    out: list[tuple[str, Any]] = []
    kind = node.get("type")
    for spec in EDGE_FIELDS.get(kind, ()) if isinstance(kind, str) else ():
        if "[]." in spec:
            list_name, sub = spec.split("[].")
            items = node.get(list_name)
            if not isinstance(items, list):
                continue
            for i, item in enumerate(items):
                if isinstance(item, dict) and item.get(sub) is not None:
                    out.append((f"{list_name}[{i}].{sub}", item[sub]))
        elif node.get(spec) is not None:
            out.append((spec, node[spec]))
    return out


def flow_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a flow document, for editors and API docs."""
    schema = Flow.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("title", "voxgate flow")
    return schema
