"""The configuration error and the hint for numbers YAML read as text: the bottom of the package,
imported by the config module and by the modules the config validation calls (no imports of the
package here).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["ConfigError", "yaml_number_hint"]


class ConfigError(ValueError):
    """A configuration error; the message names the offending key."""


def yaml_number_hint(value: Any) -> str:
    """How to write a number that YAML read as text ('2e-5', '"0.1"'), or ''."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    exponent = re.fullmatch(r"\s*([-+]?)(\d*)(?:\.(\d*))?[eE]([-+]?)(\d+)\s*", value)
    if exponent:
        sign, whole, fraction, exp_sign, exp = exponent.groups()
        number = f"{sign}{whole or 0}.{fraction or 0}e{exp_sign or '+'}{exp}"
        return f" (YAML reads {value} as text: write {number})"
    return " (a number in quotes is text to YAML: write it without quotes)"
