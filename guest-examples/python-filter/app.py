"""A small rule-language filter plugin for the automation host, in Python.

Built with componentize-py against the host's WIT (world `filter-plugin`,
package automation:plugin@0.1.0). The app module exports a class named after
the exported interface (`filter` -> `Filter`).

The rule language (identical in ../js-filter/filter.js):

    rule   := kind ":" value ("," value)*
    kind   := "sender" | "label"
    value  := one or more characters other than ","; surrounding blanks (space,
              tab, CR, LF) are trimmed and a value may not be empty after trimming

- `sender:alice,bob` matches when payload.sender.login is one of the values.
- `label:bug` (or `label:bug,security`) matches when any name in
  payload.pull_request.labels[].name or payload.issue.labels[].name is one
  of the values.

Comparisons are exact (case-sensitive). A missing or mistyped field is no
match, not an error. A payload that is not JSON makes every expression an
`invalid-input` error; an invalid expression is an `invalid-input` error
with the same text `validate` gives.
"""

import json
from typing import Dict, List, Tuple, Union

from componentize_py_types import Err, Ok, Result
from wit_world import exports
from wit_world.imports.types import Error, Error_InvalidInput, Event

KINDS = ("sender", "label")
MAX_EXPRESSION_BYTES = 4096
BLANKS = " \t\r\n"
MAX_CACHE = 1024

# kind, values; or the error text.
Rule = Tuple[str, frozenset]
_cache: Dict[str, Union[Rule, str]] = {}


def quote(text: str) -> str:
    """JSON string quoting, as JSON.stringify does in filter.js."""
    return json.dumps(text, ensure_ascii=False)


def parse_rule(expression: str) -> Union[Rule, str]:
    """Parses an expression into (kind, values) or returns an error message."""
    size = len(expression.encode("utf-8"))
    if size > MAX_EXPRESSION_BYTES:
        return f"expression is {size} bytes long; the limit is {MAX_EXPRESSION_BYTES}"
    text = expression.strip(BLANKS)
    if not text:
        return 'empty expression: expected "sender:<login>[,<login>...]" or "label:<name>[,<name>...]"'
    kind, colon, rest = text.partition(":")
    kind = kind.strip(BLANKS)
    if not colon:
        return f'missing ":" in {quote(text)}: expected "sender:<login>[,<login>...]" or "label:<name>[,<name>...]"'
    if kind not in KINDS:
        return f'unknown rule kind {quote(kind)} before ":": expected "sender" or "label"'
    values = []
    for position, raw in enumerate(rest.split(","), start=1):
        value = raw.strip(BLANKS)
        if not value:
            return f'{kind}: value {position} is empty: give a comma-separated list such as "{kind}:a,b"'
        values.append(value)
    return (kind, frozenset(values))


def compiled(expression: str) -> Union[Rule, str]:
    rule = _cache.get(expression)
    if rule is None:
        rule = parse_rule(expression)
        if len(_cache) >= MAX_CACHE:
            _cache.clear()
        _cache[expression] = rule
    return rule


def _get(obj, *path):
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _label_names(payload) -> List[str]:
    names = []
    for container in ("pull_request", "issue"):
        labels = _get(payload, container, "labels")
        if isinstance(labels, list):
            for label in labels:
                name = _get(label, "name")
                if isinstance(name, str):
                    names.append(name)
    return names


def evaluate(rule: Rule, payload) -> bool:
    kind, values = rule
    if kind == "sender":
        login = _get(payload, "sender", "login")
        return isinstance(login, str) and login in values
    # label
    return any(name in values for name in _label_names(payload))


class Filter(exports.Filter):
    def validate(self, expression: str) -> None:
        rule = compiled(expression)
        if isinstance(rule, str):
            raise Err(Error_InvalidInput(rule))

    def matches(self, event: Event, expressions: List[str]) -> List[Result[bool, Error]]:
        try:
            payload = json.loads(event.payload)
        except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
            message = f"the event payload is not valid JSON: {e}"
            return [Err(Error_InvalidInput(message)) for _ in expressions]
        results: List[Result[bool, Error]] = []
        for expression in expressions:
            rule = compiled(expression)
            if isinstance(rule, str):
                results.append(Err(Error_InvalidInput(rule)))
            else:
                results.append(Ok(evaluate(rule, payload)))
        return results
