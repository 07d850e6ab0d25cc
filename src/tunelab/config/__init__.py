"""Configuration: the rule language, the schema check of a composed config, config identity and
the sweep grammar (`interval(...)`, `choice(...)`, ...) shared by sweeps, studies and reports."""

from tunelab.config.schema import ConfigError, validate

__all__ = ["ConfigError", "validate"]
