"""The agent box of the architecture: what the agent says in a session, from a flow and the service's LLM.

``flow_agent`` runs a flow inside a session (the session's ``TurnAgent``); ``llm`` is the flows' ``complete``
function on the service's own LLM engine, for callers' turns and for background work (drafts).
"""
