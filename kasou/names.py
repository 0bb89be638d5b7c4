"""Names users give to things, as a pydantic type (kept out of kasou.paths, which the CLI
imports on every call and which must stay free of pydantic's import cost)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from kasou.paths import NAME_PATTERN, SAFE_NAME


def _valid_name(value: str) -> str:
    if not SAFE_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not allowed: use 1-63 letters, digits, '-', '_' or "
                         "'.', starting with a letter or digit")
    return value


Name = Annotated[str, AfterValidator(_valid_name),
                 Field(json_schema_extra={"pattern": NAME_PATTERN})]
"""A user-given name in a pydantic model: safe as one path component, pattern in the schema."""
