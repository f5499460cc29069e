"""Slack's manifest and Block Kit schemas, checked offline with jsonschema.

The schemas live in ``tests/data/`` with their licence files beside them
(``LICENSE.manifest-schema``: Slack Technologies, MIT; ``LICENSE.blockkit-schema``:
Tightknit and slack-block-kit-validator contributors, MIT), so the suite needs
nothing outside the repository.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, Draft202012Validator, ValidationError

DATA = Path(__file__).resolve().parent / "data"
MESSAGE_MAX_BLOCKS = 50
SECTION_TEXT_MAX = 3000


@cache
def _validator(name: str) -> Draft7Validator | Draft202012Validator:
    schema = json.loads((DATA / name).read_text())
    kind = Draft202012Validator if "2020-12" in schema.get("$schema", "") else Draft7Validator
    kind.check_schema(schema)
    return kind(schema)


def manifest_errors(text: str) -> list[str]:
    """One line per problem in an app manifest (YAML text); empty when Slack would accept it."""
    doc = yaml.safe_load(text)
    return [
        f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}"
        for e in _validator("manifest.schema.json").iter_errors(doc)
    ]


def blocks_errors(blocks: list[Any]) -> list[str]:
    """One line per problem in a message's blocks: the schema's deepest complaint, and Slack's size limits."""
    errors = [
        f"{'/'.join(map(str, d.absolute_path))}: {d.message[:160]}"
        for d in map(_deepest, _validator("blockkit.schema.json").iter_errors(blocks))
    ]
    if len(blocks) > MESSAGE_MAX_BLOCKS:
        errors.append(f"{len(blocks)} blocks; a message holds at most {MESSAGE_MAX_BLOCKS}")
    for i, block in enumerate(blocks):
        text = (block.get("text") or {}).get("text", "") if isinstance(block, dict) else ""
        if len(text) > SECTION_TEXT_MAX:
            errors.append(f"{i}/text: {len(text)} chars; at most {SECTION_TEXT_MAX}")
    return errors


def _deepest(error: ValidationError) -> ValidationError:
    """A oneOf over every block type fails at the top; the useful line is the leaf deepest in the payload."""
    leaves, stack = [], [error]
    while stack:
        e = stack.pop()
        if e.context:
            stack.extend(e.context)
        else:
            leaves.append(e)
    return max(leaves, key=lambda x: (len(x.absolute_path), x.validator not in ("const", "type")))
