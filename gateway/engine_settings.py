"""Engine options under their flat setting names (``VOXGATE_STT_MODEL``, ``stt_model = ...`` in TOML).

Settings keep one nested ``<role>_options`` field per engine role; this settings source moves the flat names,
which every registered engine's options model defines, into it, once per source so that precedence holds.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from engines.registry import flat_option_names


class FlatEngineOptions(PydanticBaseSettingsSource):
    """Engine options under their flat names, moved into ``<role>_options``.

    Wraps the values of another source (init arguments, the TOML file) or, with none, reads the environment:
    ``VOXGATE_<FLAT NAME>`` for every option of every registered engine (case-insensitive, as settings are).
    """

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource | None) -> None:
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ produces the whole mapping

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        flat = {name: target for name, target in flat_option_names().items() if name not in fields}
        if self._inner is not None:
            values = dict(self._inner())
        else:
            environ = {key.lower(): value for key, value in os.environ.items()}
            values = {name: environ[f"voxgate_{name}"] for name in flat if f"voxgate_{name}" in environ}
        for key in [key for key in values if key in flat]:
            role, option = flat[key]
            nested = values.get(f"{role}_options")
            values[f"{role}_options"] = {
                **(nested if isinstance(nested, dict) else {}),
                option: values.pop(key),
            }
        return values
