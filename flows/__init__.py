"""Agent flow graphs: a JSON format for call flows, its validation, a runner, and AI-drafted flows.

Pure Python: nothing here imports transports or engines. The host application provides a
:class:`~flows.runner.FlowHost` (say, emit, end, transfer) and an async ``complete`` function for the LLM.
"""

from flows.draft import DraftResult, draft_flow, draft_json_schema
from flows.examples import example_flows
from flows.http_tool import HttpResult, HttpTool
from flows.runner import CompleteFn, FlowHost, FlowRunner
from flows.schema import Flow, flow_json_schema
from flows.validate import FlowIssue, FlowValidationError, load_flow, validate_flow

__all__ = [
    "CompleteFn",
    "DraftResult",
    "Flow",
    "FlowHost",
    "FlowIssue",
    "FlowRunner",
    "FlowValidationError",
    "HttpResult",
    "HttpTool",
    "draft_flow",
    "draft_json_schema",
    "example_flows",
    "flow_json_schema",
    "load_flow",
    "validate_flow",
]
