"""OpenAPI request bodies for the endpoints that read the raw body themselves.

Bulk endpoints decode the body row by row (to list every invalid row), so litestar
cannot see a ``data`` parameter to document. :func:`bulk_body` gives such a route
an operation class that documents the body from the same msgspec struct the
handler decodes with, so the schema cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

__all__ = ["bulk_body", "to_openapi_schema"]

_TYPES = {t.value: t for t in OpenAPIType}
_SIMPLE = {
    "title": "title",
    "description": "description",
    "default": "default",
    "enum": "enum",
    "minimum": "minimum",
    "maximum": "maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "required": "required",
}


def to_openapi_schema(node: dict[str, Any], defs: dict[str, Any]) -> Schema:
    """Convert a msgspec JSON Schema node to litestar's :class:`Schema`, inlining ``$ref``."""
    ref = node.get("$ref")
    if ref is not None:
        return to_openapi_schema(defs[ref.rsplit("/", 1)[-1]], defs)
    kwargs: dict[str, Any] = {}
    kind = node.get("type")
    if isinstance(kind, str):
        kwargs["type"] = _TYPES[kind]
    elif isinstance(kind, list):
        kwargs["type"] = [_TYPES[k] for k in kind]
    for src, dst in _SIMPLE.items():
        if src in node:
            kwargs[dst] = node[src]
    if "properties" in node:
        kwargs["properties"] = {
            name: to_openapi_schema(sub, defs) for name, sub in node["properties"].items()
        }
    if "items" in node:
        kwargs["items"] = to_openapi_schema(node["items"], defs)
    if "anyOf" in node:
        kwargs["any_of"] = [to_openapi_schema(sub, defs) for sub in node["anyOf"]]
    if node.get("additionalProperties") is False:
        kwargs["additional_properties"] = False
    return Schema(**kwargs)


def _schema_of(kind: type) -> Schema:
    (root,), components = msgspec.json.schema_components([kind])
    return to_openapi_schema(root, components)


def bulk_body(kind: type | None, *, toml: bool = False) -> type[Operation]:
    """An :class:`Operation` class documenting a JSON body of ``kind`` and its CSV form, or TOML."""
    content: dict[str, OpenAPIMediaType] = {}
    if kind is not None:
        content["application/json"] = OpenAPIMediaType(schema=_schema_of(kind))
        fields = ", ".join(_row_fields(kind))
        content["text/csv"] = OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.STRING,
                description=f"a header row naming columns among: {fields}; then one row per item",
            )
        )
    if toml:
        content["application/toml"] = OpenAPIMediaType(
            schema=Schema(type=OpenAPIType.STRING, description="an anchor catalogue in TOML")
        )
    body = RequestBody(content=content, required=True)

    class _BodyOperation(Operation):
        # Operation's dataclass __init__ calls no __post_init__, so extend __init__.
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.request_body is None:
                self.request_body = body

    return _BodyOperation


def _row_fields(kind: type) -> tuple[str, ...]:
    """Field names of the row struct inside a bulk envelope struct (its single list field)."""
    hints = msgspec.inspect.type_info(kind)
    for field in getattr(hints, "fields", ()):
        item = getattr(field.type, "item_type", None)
        if isinstance(item, msgspec.inspect.StructType):
            return tuple(f.name for f in item.fields)
    return ()


#: Problem responses every /v1 operation can give (service/problems.py maps every error).
_PROBLEM_STATUSES: dict[str, str] = {
    "400": "Bad request: a body, parameter or row is invalid; `errors` lists row and field",
    "401": "No valid API key",
    "403": "The key lacks the scope this operation needs",
    "404": "No such resource in this organisation (also another organisation's paths)",
    "409": "Conflict with the current state (for example a locked session)",
    "413": "Request body too large",
    "429": "Rate limit exceeded; see Retry-After",
    "503": "Redis unreachable; see Retry-After",
}


def document_problems(spec: Any) -> None:
    """Document the RFC 9457 problem responses on every ``/v1`` operation of ``spec``.

    litestar documents a generic 400 body of its own; every error of this service is an
    ``application/problem+json`` body instead (see :mod:`service.problems`), so the schema
    says so, with one shared ``Problem`` component.
    """
    from litestar.openapi.spec import (
        Components,
        OpenAPIMediaType,
        OpenAPIResponse,
        OpenAPIType,
        Reference,
    )

    problem = Schema(
        type=OpenAPIType.OBJECT,
        required=["title", "status"],
        properties={
            "type": Schema(type=OpenAPIType.STRING),
            "title": Schema(type=OpenAPIType.STRING),
            "status": Schema(type=OpenAPIType.INTEGER),
            "detail": Schema(type=OpenAPIType.STRING),
            "instance": Schema(type=OpenAPIType.STRING),
            "errors": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT)),
        },
        description="RFC 9457 problem details",
    )
    if spec.components is None:
        spec.components = Components()
    if spec.components.schemas is None:
        spec.components.schemas = {}
    spec.components.schemas["Problem"] = problem
    ref = Reference(ref="#/components/schemas/Problem")
    for path, item in (spec.paths or {}).items():
        if not path.startswith("/v1/"):
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            op = getattr(item, method, None)
            if op is None:
                continue
            responses = dict(op.responses or {})
            for status, text in _PROBLEM_STATUSES.items():
                responses[status] = OpenAPIResponse(
                    description=text,
                    content={"application/problem+json": OpenAPIMediaType(schema=ref)},
                )
            op.responses = responses
