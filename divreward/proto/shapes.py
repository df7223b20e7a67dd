"""How a pydantic field of the API schema is carried in protobuf: one rule per shape.

The ``.proto`` mirrors :mod:`divreward.schema` field by field, with the same field
names; this module classifies each pydantic annotation into a :class:`Shape`, and both
the converter (:mod:`divreward.proto.convert`) and the test that keeps the ``.proto`` in
step with the schema use it, so the rules below are stated once:

======================================  =============================================
pydantic                                protobuf
======================================  =============================================
``str`` / ``Literal[...]``              ``string``
``int`` / ``float`` / ``bool``          ``int64`` / ``double`` / ``bool``
``bytes`` (``ImageBytes``)              ``bytes`` (raw file bytes, never base64)
field with a default or ``| None``      ``optional`` scalar (presence kept)
``list[T]``                             ``repeated T``
``list[T] | None``                      a wrapper message (``FloatList``, ...) so that
                                        ``None`` and ``[]`` stay distinct
``list[list[float]]``                   ``repeated FloatList`` (``FloatMatrix`` if None-able)
``dict[str, T]``                        ``map<string, T>`` (``FloatMap`` if None-able)
``dict[str, JsonValue | Any]``          ``string`` holding the JSON text
``list[dict[str, JsonValue] | None]``   ``string`` holding the JSON text (an array)
``list[str | int]`` (error locations)   ``repeated LocItem`` (``oneof key/index``)
a model                                 the message of the same name
a union of models on ``method``         a ``oneof`` named as the field, one member
                                        per method value
======================================  =============================================

Presence is exact: only the fields a pydantic instance has *set* are written, so a
round trip keeps ``model_fields_set``, which the server uses to tell "use the server's
default" from "the caller asked for this value".
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, JsonValue
from pydantic.fields import FieldInfo

__all__ = ["Shape", "classify", "field_shapes", "wrapper_name"]

ShapeKind = Literal["scalar", "json", "list", "dict", "model", "union", "loc"]

_SCALARS: dict[type, str] = {
    str: "string",
    int: "int64",
    float: "double",
    bool: "bool",
    bytes: "bytes",
}


@dataclass(frozen=True)
class Shape:
    kind: ShapeKind
    nullable: bool = False
    scalar: type | None = None  # kind == "scalar"
    inner: Shape | None = None  # kind in ("list", "dict")
    model: type[BaseModel] | None = None  # kind == "model"
    members: tuple[tuple[str, type[BaseModel]], ...] = ()  # kind == "union": (method, cls)

    def with_nullable(self) -> Shape:
        return Shape(self.kind, True, self.scalar, self.inner, self.model, self.members)

    @property
    def proto_scalar(self) -> str:
        assert self.scalar is not None
        return _SCALARS[self.scalar]


def _strip_annotated(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _is_json(tp: Any) -> bool:
    return tp is Any or tp is JsonValue


def classify(annotation: Any) -> Shape:
    """The :class:`Shape` of one pydantic annotation (raises ``TypeError`` if unmapped)."""
    tp = _strip_annotated(annotation)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        nullable = len(args) < len(get_args(tp))
        if len(args) == 1:
            shape = classify(args[0])
            return shape.with_nullable() if nullable else shape
        stripped = [_strip_annotated(a) for a in args]
        if len(stripped) == 1:
            return classify(stripped[0])
        if all(isinstance(a, type) and issubclass(a, BaseModel) for a in stripped):
            members = tuple((_method_of(a), a) for a in stripped)
            return Shape("union", nullable, members=members)
        if set(stripped) == {str, int}:
            return Shape("loc", nullable)
        raise TypeError(f"no protobuf mapping for the union {tp!r}")
    if origin is Literal:
        values = get_args(tp)
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"only string literals are mapped, got {tp!r}")
        return Shape("scalar", scalar=str)
    if origin is list:
        (inner,) = get_args(tp)
        shape = classify(inner)
        if shape.kind == "json":  # a list of free-form objects: one JSON text
            return Shape("json")
        return Shape("list", inner=shape)
    if origin is dict:
        key, value = get_args(tp)
        if key is not str:
            raise TypeError(f"only str-keyed dicts are mapped, got {tp!r}")
        if _is_json(_strip_annotated(value)):
            return Shape("json")
        return Shape("dict", inner=classify(value))
    if _is_json(tp):
        return Shape("json")
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return Shape("model", model=tp)
    if tp in _SCALARS:
        return Shape("scalar", scalar=tp)
    if isinstance(tp, typing.TypeAliasType if hasattr(typing, "TypeAliasType") else ()):
        return classify(tp.__value__)
    raise TypeError(f"no protobuf mapping for {tp!r}")


def _method_of(cls: type[BaseModel]) -> str:
    field = cls.model_fields.get("method")
    if field is None or not isinstance(field.default, str):
        raise TypeError(f"{cls.__name__} is in a union but has no 'method' discriminator")
    return field.default


def wrapper_name(shape: Shape) -> str:
    """Name of the wrapper message that carries a None-able list or dict."""
    if shape.kind == "list":
        inner = shape.inner
        assert inner is not None
        if inner.kind == "scalar":
            return {float: "FloatList", int: "IntList", str: "StringList", bytes: "BytesList"}[
                inner.scalar  # type: ignore[index]
            ]
        if inner.kind == "list" and inner.inner is not None and inner.inner.scalar is float:
            return "FloatMatrix"
        if inner.kind == "model" and inner.model is not None:
            return f"{inner.model.__name__}List"
    if shape.kind == "dict" and shape.inner is not None and shape.inner.scalar is float:
        return "FloatMap"
    raise TypeError(f"no wrapper message for {shape}")


def has_default(info: FieldInfo) -> bool:
    return not info.is_required()


def field_shapes(model: type[BaseModel]) -> dict[str, tuple[Shape, FieldInfo]]:
    """Every field of ``model`` with its shape, in declaration order."""
    return {name: (classify(info.annotation), info) for name, info in model.model_fields.items()}
