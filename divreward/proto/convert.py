"""pydantic <-> protobuf for every API message, driven by the field shapes.

``to_proto(model)`` writes only the fields the instance has *set* (presence kept) and
``from_proto(message, Model)`` validates through the pydantic model, so that the gRPC
path applies exactly the checks of the HTTP path (a bad field raises
``pydantic.ValidationError`` naming it). The per-shape rules are in
:mod:`divreward.proto.shapes`.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, TypeVar

from google.protobuf.message import Message
from pydantic import BaseModel

from divreward.proto import divreward_pb2 as pb
from divreward.proto.shapes import Shape, field_shapes

__all__ = ["from_proto", "message_class", "to_proto"]

M = TypeVar("M", bound=BaseModel)


def message_class(model: type[BaseModel]) -> type[Message]:
    """The protobuf class mirroring ``model`` (same name in ``divreward.v1``)."""
    cls = getattr(pb, model.__name__, None)
    if cls is None:
        raise TypeError(f"divreward.proto has no message {model.__name__}")
    return cls  # type: ignore[no-any-return]


@cache
def _plan(model: type[BaseModel]) -> tuple[tuple[str, Shape], ...]:
    return tuple((name, shape) for name, (shape, _) in field_shapes(model).items())


# ------------------------------------------------------------------- pydantic -> proto
def to_proto(model: BaseModel, message: Message | None = None) -> Message:
    """Fill (or create) the message mirroring ``model`` with the fields it has set."""
    msg = message if message is not None else message_class(type(model))()
    fields_set = model.model_fields_set
    for name, shape in _plan(type(model)):
        if name not in fields_set:
            continue
        value = getattr(model, name)
        if value is None:
            continue
        _write(msg, name, shape, value)
    return msg


def _write(msg: Message, name: str, shape: Shape, value: Any) -> None:
    kind = shape.kind
    if kind == "scalar":
        setattr(msg, name, value)
    elif kind == "json":
        setattr(msg, name, json.dumps(value, separators=(",", ":")))
    elif kind == "model":
        sub = getattr(msg, name)
        sub.SetInParent()  # presence even when the sub-model has no field set
        to_proto(value, sub)
    elif kind == "union":
        member = value.method
        sub = getattr(msg, member)
        sub.SetInParent()
        to_proto(value, sub)
    elif kind == "list":
        assert shape.inner is not None
        if shape.nullable:
            wrapper = getattr(msg, name)
            wrapper.SetInParent()
            field = wrapper.rows if shape.inner.kind == "list" else wrapper.values
        else:
            field = getattr(msg, name)
        _extend(field, shape.inner, value)
    elif kind == "dict":
        assert shape.inner is not None
        if shape.nullable:
            wrapper = getattr(msg, name)
            wrapper.SetInParent()
            target = wrapper.values
        else:
            target = getattr(msg, name)
        inner = shape.inner
        for key, item in value.items():
            if inner.kind == "scalar":
                target[key] = item
            elif inner.kind == "model":
                to_proto(item, target[key])
            elif inner.kind == "list":
                target[key].values.extend(item)
            else:
                raise TypeError(f"{name}: no protobuf mapping for dict values {inner}")
    else:
        raise TypeError(f"{name}: unmapped shape {shape}")


def _extend(field: Any, inner: Shape, values: list[Any]) -> None:
    if inner.kind == "scalar":
        field.extend(values)
    elif inner.kind == "model":
        for item in values:
            to_proto(item, field.add())
    elif inner.kind == "list":  # list[list[float]] -> repeated FloatList
        for row in values:
            field.add().values.extend(row)
    elif inner.kind == "loc":
        _write_loc(field, values)
    else:
        raise TypeError(f"no protobuf mapping for list items {inner}")


def _write_loc(field: Any, values: list[str | int]) -> None:
    for item in values:
        entry = field.add()
        if isinstance(item, int) and not isinstance(item, bool):
            entry.index = item
        else:
            entry.key = str(item)


# ------------------------------------------------------------------- proto -> pydantic
def from_proto(message: Message, model: type[M]) -> M:
    """Validate ``message`` as ``model`` (raises ``pydantic.ValidationError``).

    The message is turned into plain nested data first and validated once at the top,
    so that an error's location is the full path (``diversity.drift.lam``), as on HTTP.
    """
    return model.model_validate(_read_fields(message, model))


def _read_fields(msg: Message, model: type[BaseModel]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    for name, shape in _plan(model):
        present, value = _read(msg, name, shape)
        if present or name in required:
            data[name] = value
    return data


def _read(msg: Message, name: str, shape: Shape) -> tuple[bool, Any]:
    kind = shape.kind
    if kind == "union":
        member = msg.WhichOneof(name)
        if member is None:
            return False, None
        cls = dict(shape.members)[member]
        # the oneof member names the method; pydantic needs it as the discriminator
        return True, {**_read_fields(getattr(msg, member), cls), "method": member}
    desc = msg.DESCRIPTOR.fields_by_name.get(name)
    if desc is None:
        raise TypeError(f"{msg.DESCRIPTOR.full_name} has no field {name!r}")
    if kind in ("scalar", "json"):
        if desc.has_presence and not msg.HasField(name):
            return False, None
        value = getattr(msg, name)
        return True, json.loads(value) if kind == "json" else value
    if kind == "model":
        if not msg.HasField(name):
            return False, None
        assert shape.model is not None
        return True, _read_fields(getattr(msg, name), shape.model)
    if kind == "list":
        assert shape.inner is not None
        if shape.nullable:
            if not msg.HasField(name):
                return False, None
            wrapper = getattr(msg, name)
            field = wrapper.rows if shape.inner.kind == "list" else wrapper.values
            return True, _read_items(field, shape.inner)
        field = getattr(msg, name)
        return len(field) > 0, _read_items(field, shape.inner)
    if kind == "dict":
        assert shape.inner is not None
        if shape.nullable:
            if not msg.HasField(name):
                return False, None
            source = getattr(msg, name).values
        else:
            source = getattr(msg, name)
        inner = shape.inner
        out: dict[str, Any] = {}
        for key in source:
            item = source[key]
            if inner.kind == "scalar":
                out[key] = item
            elif inner.kind == "model":
                assert inner.model is not None
                out[key] = _read_fields(item, inner.model)
            else:  # dict[str, list[float]] -> map<string, FloatList>
                out[key] = list(item.values)
        return len(out) > 0 or shape.nullable, out
    raise TypeError(f"{name}: unmapped shape {shape}")


def _read_items(field: Any, inner: Shape) -> list[Any]:
    if inner.kind == "scalar":
        return list(field)
    if inner.kind == "model":
        assert inner.model is not None
        return [_read_fields(item, inner.model) for item in field]
    if inner.kind == "list":
        return [list(row.values) for row in field]
    if inner.kind == "loc":
        return _read_loc(field)
    raise TypeError(f"no protobuf mapping for list items {inner}")


def _read_loc(field: Any) -> list[str | int]:
    out: list[str | int] = []
    for entry in field:
        which = entry.WhichOneof("item")
        out.append(entry.index if which == "index" else entry.key)
    return out
