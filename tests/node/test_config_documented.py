"""The embedded default config's commented block documents every key of the schema (that the
default loads is tests/node/test_config.py's test_embedded_default_is_valid)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ct2mri_node.config import DEFAULT_CONFIG_PATH, NodeConfig, parse_config

BEGIN, END = "# --- every key", "# --- end ---"


def _documented_block() -> dict[str, Any]:
    """The commented block of the default config, uncommented and parsed as YAML."""
    lines = DEFAULT_CONFIG_PATH.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(BEGIN))
    end = lines.index(END)
    body = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines[start + 1:end]]
    data = yaml.safe_load("\n".join(body))
    assert isinstance(data, dict)
    return data


def _model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key path of a pydantic model, nested models and lists of models included; the
    user-chosen key of a mapping (``models.<name>``, ``rules.match.<keyword>``) is written ``*``."""
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        below = f"{prefix}{name}.*." if _is_mapping(field.annotation) else f"{prefix}{name}."
        for sub in _models_in(field.annotation):
            keys |= _model_keys(sub, below)
    return keys


def _is_mapping(annotation: Any) -> bool:
    if getattr(annotation, "__origin__", None) is dict:
        return True
    return any(_is_mapping(arg) for arg in getattr(annotation, "__args__", ()))


def _documented(key: str, data_keys: set[str]) -> bool:
    """``key`` (``*`` standing for any one user-chosen key) is among the documented paths."""
    pattern = re.compile("^" + r"\.".join("[^.]+" if part == "*" else re.escape(part) for part in key.split(".")) + "$")
    return any(pattern.match(k) for k in data_keys)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _data_keys(data: Any, prefix: str = "") -> set[str]:
    """Every key path in parsed YAML (the items of a list merged)."""
    keys: set[str] = set()
    items = data if isinstance(data, list) else [data]
    for item in items:
        if isinstance(item, dict):
            for name, value in item.items():
                keys.add(prefix + name)
                keys |= _data_keys(value, f"{prefix}{name}.")
    return keys


def test_commented_block_is_valid_and_lists_every_key(tmp_path: Path) -> None:
    data = _documented_block()
    # model and models are alternatives (both at once is an error): the block documents both,
    # so it is checked once with models (and the rules that name them) and once with model alone
    alternatives = ({k: v for k, v in data.items() if k != "model"}, {k: v for k, v in data.items() if k not in ("models", "rules")})
    for variant in alternatives:
        parse_config(variant, tmp_path, "the commented block of config/ct2mri-node.yaml")  # only schema keys, valid values
    keys = _data_keys(data)
    missing = {k for k in _model_keys(NodeConfig) if not _documented(k, keys)}
    assert not missing, f"keys of config.py not documented in config/ct2mri-node.yaml: {sorted(missing)}"
