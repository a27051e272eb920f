"""Agent flow graphs (schema, validation, runner)."""
