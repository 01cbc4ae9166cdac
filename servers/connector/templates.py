"""Context and result templates of connector instances, and the masking of sensitive values.

A template is a JSON value (a `google.protobuf.Struct` on the wire) whose string leaves may read from a
source value through placeholders:

* a string that is exactly one placeholder, `"{{context.customer.id}}"` (spaces inside the braces allowed),
  is replaced by the value at that dotted path, whatever its JSON type (object, list, number, bool, null);
* a string with placeholders among other text, `"Hello {{context.name}}!"`, becomes a string: each
  placeholder is replaced by its value as text (strings as they are, whole numbers without `.0`, `true`,
  `false`, `null` as `""`, objects and lists as compact JSON);
* `{{context}}` / `{{result}}` alone is the whole source value;
* a path segment of digits indexes a list (`{{result.items.0.name}}`);
* every other value, and text in double braces that does not start with the template's root (such as an
  n8n expression `{{ $json.x }}`), is copied as is.

Input templates read `context` and a missing path is the caller's fault (`TemplateError`, which the service
turns into INVALID_ARGUMENT before any platform call). Output templates read `result`; a missing path there
becomes `null` (or `""` inside a string), because the shape of a platform's output is not the caller's fault
and a partial result is more useful than a failed invocation.

Paths given to `missing_fields` and `mask` are relative to the value they apply to (`customer.id`, not
`context.customer.id`).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2

MASK = "***"

# Dict keys masked wherever they appear (compared lower-case, with `-` read as `_`; a key also matches when it
# ends with `_` and one of these, such as `x_api_key` or `webhook_secret`).
DEFAULT_SENSITIVE_KEYS: frozenset[str] = frozenset(
    {
        "password",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "access_token",
        "refresh_token",
        "private_key",
        "client_secret",
    }
)

_SEGMENT = r"[A-Za-z0-9_-]+"
# One placeholder: `{{ root }}` or `{{ root.a.b }}`.
PLACEHOLDER = re.compile(r"\{\{\s*(context|result)((?:\." + _SEGMENT + r")*)\s*\}\}")
# Anything in double braces that starts with a root word, to find malformed or misplaced placeholders.
_ROOTED = re.compile(r"\{\{\s*(context|result)\b[^}]*\}\}")

# Struct stores every number as a double; whole numbers up to 2^53 are given back as int.
_MAX_EXACT_INT = 2**53


class TemplateError(ValueError):
    """A placeholder of an input template names a path the context does not have."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is missing")
        self.path = path


class _Missing(Exception):
    pass


# --- conversions ----------------------------------------------------------------------------------------


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_EXACT_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def struct_to_dict(struct: struct_pb2.Struct | None) -> dict[str, Any]:
    """A Struct as a plain dict (whole numbers as int); None gives `{}`."""
    if struct is None:
        return {}
    result: dict[str, Any] = _ints(json_format.MessageToDict(struct))
    return result


def dict_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """A plain dict of JSON values as a Struct.

    Raises:
        ValueError: when a value is not JSON (such as a set or a non-finite number).
    """
    struct = struct_pb2.Struct()
    try:
        json_format.ParseDict(dict(value), struct)
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from None
    return struct


def value_to_py(value: struct_pb2.Value | None) -> Any:
    """A Value as a plain Python value (whole numbers as int); None or an unset Value gives None."""
    if value is None or value.WhichOneof("kind") is None:
        return None
    return _ints(json_format.MessageToDict(value))


def py_to_value(value: Any) -> struct_pb2.Value:
    """A plain JSON value as a Value.

    Raises:
        ValueError: when the value is not JSON.
    """
    out = struct_pb2.Value()
    try:
        json_format.ParseDict(value, out)
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from None
    return out


def _as_dict(template: struct_pb2.Struct | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if template is None:
        return None
    if isinstance(template, struct_pb2.Struct):
        return struct_to_dict(template) if template.fields else None
    return dict(template) if template else None


# --- paths ----------------------------------------------------------------------------------------------


def _segments(path: str) -> list[str]:
    return [s for s in path.split(".") if s]


def _lookup(value: Any, segments: Sequence[str]) -> Any:
    for seg in segments:
        if isinstance(value, Mapping):
            if seg not in value:
                raise _Missing
            value = value[seg]
        elif isinstance(value, list) and seg.isdigit() and int(seg) < len(value):
            value = value[int(seg)]
        else:
            raise _Missing
    return value


def lookup(value: Any, path: str) -> Any:
    """The value at a dotted path (digits index lists).

    Raises:
        KeyError: when the path does not exist.
    """
    try:
        return _lookup(value, _segments(path))
    except _Missing:
        raise KeyError(path) from None


def missing_fields(context: Mapping[str, Any], required: Sequence[str]) -> list[str]:
    """The required dotted paths the context does not carry, in the order given.

    A field that is present but `null` counts as missing: a required field must carry a value.
    """
    missing = []
    for path in required:
        try:
            found = _lookup(context, _segments(path))
        except _Missing:
            missing.append(path)
            continue
        if found is None:
            missing.append(path)
    return missing


# --- rendering ------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _render(node: Any, root: str, source: Any, *, strict: bool) -> Any:
    if isinstance(node, Mapping):
        return {k: _render(v, root, source, strict=strict) for k, v in node.items()}
    if isinstance(node, list):
        return [_render(v, root, source, strict=strict) for v in node]
    if not isinstance(node, str) or "{{" not in node:
        return copy.deepcopy(node)

    def resolve(match: re.Match[str]) -> tuple[bool, Any]:
        path = match.group(2)
        try:
            return True, _lookup(source, _segments(path))
        except _Missing:
            if strict:
                raise TemplateError(match.group(1) + path) from None
            return False, None

    whole = PLACEHOLDER.fullmatch(node.strip())
    if whole and whole.group(1) == root:
        _, found = resolve(whole)
        return copy.deepcopy(found)

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) != root:
            return match.group(0)
        _, found = resolve(match)
        return _text(found)

    return PLACEHOLDER.sub(substitute, node)


def render_input(
    template: struct_pb2.Struct | Mapping[str, Any] | None, context: Mapping[str, Any]
) -> dict[str, Any]:
    """The platform input: the template with its `{{context.…}}` placeholders filled from the context.

    Args:
        template: The instance's input template; empty or None sends the context unchanged.
        context: The invocation context.

    Returns:
        A new dict (never shares objects with the template or the context).

    Raises:
        TemplateError: when a placeholder names a path the context does not have.
    """
    doc = _as_dict(template)
    if doc is None:
        return copy.deepcopy(dict(context))
    rendered: dict[str, Any] = _render(doc, "context", context, strict=True)
    return rendered


def render_output(template: struct_pb2.Struct | Mapping[str, Any] | None, result: Any) -> Any:
    """The invocation result: the template with its `{{result.…}}` placeholders filled from the output.

    Args:
        template: The instance's output template; empty or None keeps the platform output unchanged.
        result: The platform output (any JSON value).

    Returns:
        A new value; paths the output does not have become `null` (`""` inside a string).
    """
    doc = _as_dict(template)
    if doc is None:
        return copy.deepcopy(result)
    return _render(doc, "result", result, strict=False)


def template_problems(template: struct_pb2.Struct | Mapping[str, Any] | None, root: str) -> list[str]:
    """What is wrong with a template's placeholders: malformed ones and ones reading the other root.

    Each problem names the template path (`a.b[0]`) of the string it was found in; values are not quoted
    beyond the placeholder text itself.
    """
    doc = _as_dict(template)
    problems: list[str] = []

    def walk(node: Any, at: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{at}.{k}" if at else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{at}[{i}]")
        elif isinstance(node, str) and "{{" in node:
            for match in _ROOTED.finditer(node):
                text = match.group(0)[:80]
                ok = PLACEHOLDER.fullmatch(match.group(0))
                where = at or "(top level)"
                if not ok:
                    problems.append(f"{where}: {text} is not a placeholder such as {{{{{root}.a.b}}}}")
                elif ok.group(1) != root:
                    problems.append(f"{where}: {text} must read from {root}")

    if doc is not None:
        walk(doc, "")
    return problems


# --- masking --------------------------------------------------------------------------------------------


def _secret_key(key: str, keys: frozenset[str]) -> bool:
    norm = key.lower().replace("-", "_")
    if norm in keys:
        return True
    return any(norm.endswith("_" + k) for k in keys)


def _mask_keys(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            k: MASK if isinstance(k, str) and _secret_key(k, keys) else _mask_keys(v, keys)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask_keys(v, keys) for v in value]
    return copy.deepcopy(value)


def _mask_path(value: Any, segments: Sequence[str]) -> Any:
    """Masks in place (on a private copy) the value at `segments`; lists apply the rest to every item."""
    if not segments:
        return value
    head, rest = segments[0], segments[1:]
    if isinstance(value, dict):
        if head in value:
            value[head] = MASK if not rest else _mask_path(value[head], rest)
    elif isinstance(value, list):
        if head.isdigit():
            i = int(head)
            if i < len(value):
                value[i] = MASK if not rest else _mask_path(value[i], rest)
        else:
            for i, item in enumerate(value):
                value[i] = _mask_path(item, segments)
    return value


def mask(
    value: Any,
    sensitive_paths: Sequence[str] = (),
    *,
    also_keys: frozenset[str] = DEFAULT_SENSITIVE_KEYS,
) -> Any:
    """A deep copy of a JSON value with sensitive parts replaced by `"***"`, for logs, audit and storage.

    Args:
        value: The value to mask (a context, a result, an event payload).
        sensitive_paths: Dotted paths relative to `value` (`customer.ssn`). A digit segment indexes a list;
            any other segment over a list applies to each of its items (`customers.ssn`). Paths the value
            does not have are ignored; nothing is added.
        also_keys: Key names masked wherever they appear, compared case-insensitively with `-` read as `_`;
            a key also matches when it ends in `_<name>` (`x-api-key`, `webhook_secret`).

    Returns:
        The masked copy; the input is not changed.
    """
    out = _mask_keys(value, also_keys)
    for path in sensitive_paths:
        out = _mask_path(out, _segments(path)) if _segments(path) else MASK
    return out
