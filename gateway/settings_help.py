"""``voxgate serve --help``: every setting as (env var, default, description), nested models and each engine's
flat option names included."""

from __future__ import annotations

from pydantic import BaseModel

from engines.registry import REGISTRY, ROLES
from gateway.settings import Settings


def describe_settings() -> list[tuple[str, str, str]]:
    """(env var, default, description) for every setting, for ``voxgate serve --help`` and the docs."""
    rows: list[tuple[str, str, str]] = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub, subfield in annotation.model_fields.items():
                rows.append(
                    (
                        f"VOXGATE_{name.upper()}__{sub.upper()}",
                        repr(subfield.default),
                        subfield.description or "",
                    )
                )
            continue
        if name.endswith("_options") and name.removesuffix("_options") in ROLES:
            rows.extend(_engine_option_rows(name.removesuffix("_options"), set(Settings.model_fields)))
            continue
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        description = field.description or ""
        if name.endswith("_engine") and name.removesuffix("_engine") in ROLES:
            description += ": " + ", ".join(REGISTRY[name.removesuffix("_engine")])
        rows.append((f"VOXGATE_{name.upper()}", repr(default), description))
    return rows


def _engine_option_rows(role: str, reserved: set[str]) -> list[tuple[str, str, str]]:
    """One row per flat option name of the role's engines, saying which engines take it."""
    rows: dict[str, tuple[str, list[str], str]] = {}
    for engine, spec in REGISTRY[role].items():
        for option, field in spec.options.model_fields.items():
            flat = spec.flat_name(option)
            if flat in reserved:
                continue  # never reached from a flat name: the nested spelling still works
            default, engines, description = rows.setdefault(flat, (repr(field.default), [], ""))
            engines.append(engine)
            rows[flat] = (default, engines, description or field.description or "")
    return [
        (f"VOXGATE_{flat.upper()}", default, f"({', '.join(engines)}) {description}".rstrip())
        for flat, (default, engines, description) in rows.items()
    ]
