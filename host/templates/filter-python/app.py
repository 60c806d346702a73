"""{{name}}: a filter plugin for automation-host, in Python.

An expression is `path=value`: the delivery matches when the JSON value at
the dotted `path` of its payload, as text, is `value` (`action=opened`,
`sender.login=octocat`, `pull_request.draft=false`). Change `parse` and
`matches_rule` to decide what you need.
"""

import json
from typing import List, Tuple

from componentize_py_types import Err, Ok, Result
from wit_world import exports
from wit_world.imports.types import Error, Error_InvalidInput, Event


def parse(expression: str) -> Tuple[List[str], str]:
    path, sep, value = expression.partition("=")
    if not sep:
        raise Err(Error_InvalidInput(f"expected `path=value`, got {expression!r}"))
    keys = path.strip().split(".")
    if any(not k for k in keys):
        raise Err(Error_InvalidInput(f"empty path segment in {expression!r}"))
    return keys, value.strip()


def as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def matches_rule(keys: List[str], value: str, payload) -> bool:
    at = payload
    for key in keys:
        if not isinstance(at, dict) or key not in at:
            return False
        at = at[key]
    return as_text(at) == value


class Filter(exports.Filter):
    def validate(self, expression: str) -> None:
        parse(expression)

    def matches(self, event: Event, expressions: List[str]) -> List[Result[bool, Error]]:
        try:
            payload = json.loads(event.payload)
        except ValueError as e:
            return [Err(Error_InvalidInput(f"the payload is not JSON: {e}")) for _ in expressions]
        results: List[Result[bool, Error]] = []
        for expression in expressions:
            try:
                keys, value = parse(expression)
                results.append(Ok(matches_rule(keys, value, payload)))
            except Err as e:
                results.append(e)
        return results
