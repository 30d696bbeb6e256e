"""JSON Schemas shipped with bitsearch, and the one way a document is checked against one.

* ``policy.schema.json`` -- policy files (:mod:`bitsearch.policy`);
* ``problem.schema.json`` -- tabular problem files (:mod:`bitsearch.tabular`);
* ``suite.schema.json`` -- bench suites (:mod:`bitsearch.bench.suite`).

:func:`problems` lists every way a document breaks its schema as short messages --
``layers[3] (conv1).params: 'x' is not of type 'integer'`` -- and :func:`join` makes them
one line after the file's name.  A schema may carry its own wording: ``"x-messages"`` on a
node maps a JSON Schema keyword (or ``"*"``, any keyword) to a message template, used for
a break at that node or below it (the nearest node that has one wins).  Templates see
``{path}`` (where, as above), ``{parent}`` (the path one level up), ``{value}`` (the value
found), ``{unknown}`` / ``{known}`` (for unknown keys: the sorted lists) and whatever the
caller passes as ``context``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

HERE = Path(__file__).parent


def schema_path(name: str) -> Path:
    """The shipped schema ``name`` (``policy``, ``problem``, ``suite``)."""
    return HERE / f"{name}.schema.json"


def load_schema(name: str) -> dict:
    return json.loads(schema_path(name).read_text(encoding="utf-8"))


def problems(data: Any, schema: str | Mapping[str, Any], context: Mapping[str, Any] | None = None) -> list[str]:
    """Every way ``data`` breaks ``schema`` (a shipped schema's name, or the schema itself),
    as one short message each, in document order; empty when it conforms."""
    import jsonschema

    document = load_schema(schema) if isinstance(schema, str) else schema
    validator = jsonschema.Draft202012Validator(document)
    errors = sorted(validator.iter_errors(data), key=lambda e: (_sort_key(e.absolute_path), e.message))
    out = []
    for error in errors:
        message = _describe(error, data, document, dict(context or {}))
        if message not in out:
            out.append(message)
    return out


def join(source: str, found: list[str], limit: int = 8) -> str:
    """``source: problem`` for one, ``source: N problems: a; b; ...`` for several (at most
    ``limit`` shown): always one line."""
    if len(found) == 1:
        return f"{source}: {found[0]}"
    shown = "; ".join(found[:limit])
    more = f"; and {len(found) - limit} more" if len(found) > limit else ""
    return f"{source}: {len(found)} problems: {shown}{more}"


def path_text(path, data) -> str:
    """``layers[3] (conv1).sensitivity``: keys joined by dots, list items by index and, when
    the item has a ``name``, that name."""
    out, node = "", data
    for part in path:
        if isinstance(part, int):
            name = node[part].get("name") if isinstance(node, list) and isinstance(node[part], Mapping) else None
            out += f"[{part}]" + (f" ({name})" if name else "")
        else:
            out += ("." if out else "") + str(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return out


def _sort_key(path) -> list:
    return [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in path]


def _describe(error, data, schema, context) -> str:
    path = list(error.absolute_path)
    fields = dict(context, path=path_text(path, data), parent=path_text(path[:-1], data), value=error.instance)
    template = None
    if error.validator == "required":
        # a missing key: the missing property's own wording comes first
        missing = next((name for name in error.validator_value
                        if isinstance(error.instance, Mapping) and name not in error.instance
                        and repr(name) in error.message), None)
        sub = ((_node(schema, list(error.schema_path)[:-1]) or {}).get("properties") or {}).get(missing) or {}
        template = _template(sub, "required") or _template(sub, "*")
        if template is not None:  # worded as for the missing key itself
            fields.update(path=path_text(path + [missing], data), parent=fields["path"])
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = set((error.schema or {}).get("properties", {}))
        fields["unknown"] = sorted(set(error.instance) - known)
        fields["known"] = sorted(known)
    if template is None:
        template = _nearest_template(schema, list(error.schema_path)[:-1], error.validator)
    if template is not None:
        return _format(template, fields)
    message = error.message
    if error.validator == "additionalProperties":
        message = message.replace("Additional properties are not allowed", "unknown fields")
    elif error.validator == "oneOf":
        message = f"{error.instance!r} is not a valid value"
    elif error.validator == "required":
        message = message.replace("is a required property", "is missing")
    return f"{fields['path']}: {message}" if fields["path"] else message


def _node(schema, schema_path) -> Mapping | None:
    """The schema node at ``schema_path`` (a path of keywords and keys into the schema)."""
    node = schema
    for part in schema_path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node if isinstance(node, Mapping) else None


def _nearest_template(schema, node_path, keyword) -> str | None:
    """The ``x-messages`` template for ``keyword`` at the node of ``node_path`` or the
    nearest node above it that has one."""
    for end in range(len(node_path), -1, -1):
        node = _node(schema, node_path[:end])
        if node is None:
            continue
        template = _template(node, keyword) if end == len(node_path) else _template(node, "*")
        if template is None and end == len(node_path):
            template = _template(node, "*")
        if template is not None:
            return template
    return None


def _template(node: Mapping, keyword: str) -> str | None:
    messages = node.get("x-messages") if isinstance(node, Mapping) else None
    return messages.get(keyword) if isinstance(messages, Mapping) else None


def _format(template: str, fields: Mapping[str, Any]) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError):  # a template that names a field this break has not
        return template
