"""Typed configuration: YAML (with ${VAR} and .env) onto settings dataclasses.

The dataclasses are the one schema: their fields, types, defaults and metadata (`help`,
`size=True`, `duration=True`) decide what a config file may say. See `loader` for what each
type accepts, `units` for sizes and durations and `env` for variable substitution.
"""

from rtserve.config.env import (
    DotenvError,
    UnsetVariableError,
    load_dotenv,
    parse_dotenv,
    substitute,
)
from rtserve.config.loader import (
    ConfigErrors,
    ConfigIssue,
    SchemaKey,
    load_file,
    load_mapping,
    schema_keys,
)
from rtserve.config.units import parse_duration, parse_size

__all__ = [
    "ConfigErrors",
    "ConfigIssue",
    "DotenvError",
    "SchemaKey",
    "UnsetVariableError",
    "load_dotenv",
    "load_file",
    "load_mapping",
    "parse_dotenv",
    "parse_duration",
    "parse_size",
    "schema_keys",
    "substitute",
]
