"""The .proto and the pydantic schema stay in step: same messages, same field names,
the types the mapping rules of divreward.proto.shapes prescribe, and every message
survives pydantic -> protobuf (bytes on the wire) -> pydantic unchanged."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pydantic import BaseModel, ValidationError

from divreward import schema, schema_stream
from divreward.proto import divreward_pb2 as pb
from divreward.proto.convert import from_proto, message_class, to_proto
from divreward.proto.generate import stale_files
from divreward.proto.shapes import Shape, field_shapes, wrapper_name

# Messages with no pydantic twin: wrappers for None-able lists/dicts, error locations,
# and the argument of the no-argument calls.
PROTO_ONLY = {
    "FloatList",
    "IntList",
    "StringList",
    "BytesList",
    "FloatMatrix",
    "FloatMap",
    "MetricsGroupList",
    "LocItem",
    "HealthRequest",
    "ReadyRequest",
    "ModelsRequest",
}

_SCALAR_TYPES = {
    str: FieldDescriptor.TYPE_STRING,
    int: FieldDescriptor.TYPE_INT64,
    float: FieldDescriptor.TYPE_DOUBLE,
    bool: FieldDescriptor.TYPE_BOOL,
    bytes: FieldDescriptor.TYPE_BYTES,
}


def _api_models() -> dict[str, type[BaseModel]]:
    """Every model reachable from the two schema modules' public names."""
    found: dict[str, type[BaseModel]] = {}

    def visit(cls: type[BaseModel]) -> None:
        if cls.__name__ in found:
            return
        found[cls.__name__] = cls
        for shape, _ in field_shapes(cls).values():
            for sub in _sub_models(shape):
                visit(sub)

    for module in (schema, schema_stream):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, BaseModel):
                visit(obj)
    return found


def _sub_models(shape: Shape) -> list[type[BaseModel]]:
    if shape.kind == "model" and shape.model is not None:
        return [shape.model]
    if shape.kind == "union":
        return [cls for _, cls in shape.members]
    if shape.inner is not None:
        return _sub_models(shape.inner)
    return []


MODELS = _api_models()


def test_generated_code_is_up_to_date_with_the_proto() -> None:
    assert stale_files() == [], "run: python -m divreward.proto.generate"


def test_every_api_model_has_a_message_and_every_message_a_model() -> None:
    messages = set(pb.DESCRIPTOR.message_types_by_name)
    assert set(MODELS) - messages == set(), "API models missing from divreward.proto"
    assert messages - set(MODELS) - PROTO_ONLY == set(), "messages with no pydantic twin"
    # the streaming and assembly models are there, and the RPCs the services serve
    assert {"GroupSubmission", "GroupSubmissionResult", "AssembledGroup"} <= set(MODELS)
    service = pb.DESCRIPTOR.services_by_name["RewardService"]
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {
        "Health",
        "Ready",
        "Models",
        "Score",
        "Embed",
        "Diversity",
        "Metrics",
        "Rewards",
        "SubmitGroup",
        "RewardStream",
    }
    stream = methods["RewardStream"]
    assert stream.client_streaming and stream.server_streaming
    assert stream.input_type.name == "GroupSubmission"
    assert stream.output_type.name == "GroupSubmissionResult"


def _is_repeated(f: FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def _is_map(f: FieldDescriptor) -> bool:
    return (
        f.type == FieldDescriptor.TYPE_MESSAGE
        and f.message_type.GetOptions().map_entry
        and _is_repeated(f)
    )


def _check_element(where: str, f: FieldDescriptor, inner: Shape) -> None:
    if inner.kind == "scalar":
        assert f.type == _SCALAR_TYPES[inner.scalar], where  # type: ignore[index]
    elif inner.kind == "model":
        assert f.message_type.name == inner.model.__name__, where  # type: ignore[union-attr]
    elif inner.kind == "list":
        assert inner.inner is not None and inner.inner.scalar is float, where
        assert f.message_type.name == "FloatList", where
    elif inner.kind == "loc":
        assert f.message_type.name == "LocItem", where
    else:
        raise AssertionError(f"{where}: unexpected element shape {inner}")


def _check_field(desc: Descriptor, name: str, shape: Shape, has_default: bool) -> None:
    where = f"{desc.name}.{name}"
    if shape.kind == "union":
        assert name in desc.oneofs_by_name, f"{where}: expected a oneof"
        oneof = desc.oneofs_by_name[name]
        got = {f.name: f.message_type.name for f in oneof.fields}
        assert got == {m: cls.__name__ for m, cls in shape.members}, where
        return
    assert name in desc.fields_by_name, f"{where}: missing from the proto"
    f = desc.fields_by_name[name]
    if shape.kind in ("scalar", "json"):
        expected = (
            _SCALAR_TYPES[shape.scalar] if shape.kind == "scalar" else FieldDescriptor.TYPE_STRING
        )  # type: ignore[index]
        assert not _is_repeated(f) and f.type == expected, where
        assert f.has_presence == (has_default or shape.nullable), f"{where}: presence"
    elif shape.kind == "model":
        assert not _is_repeated(f) and f.message_type.name == shape.model.__name__, where  # type: ignore[union-attr]
    elif shape.kind in ("list", "dict", "loc") and shape.nullable:
        assert not _is_repeated(f) and f.message_type.name == wrapper_name(shape), where
    elif shape.kind in ("list", "loc"):
        assert _is_repeated(f) and not _is_map(f), where
        _check_element(where, f, shape.inner if shape.kind == "list" else shape)  # type: ignore[arg-type]
    elif shape.kind == "dict":
        assert _is_map(f), f"{where}: expected a map"
        value = f.message_type.fields_by_name["value"]
        assert shape.inner is not None
        _check_element(where, value, shape.inner)
    else:
        raise AssertionError(f"{where}: unexpected shape {shape}")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_message_fields_match_the_pydantic_model(name: str) -> None:
    model = MODELS[name]
    desc = message_class(model).DESCRIPTOR
    shapes = field_shapes(model)
    for field, (shape, info) in shapes.items():
        _check_field(desc, field, shape, not info.is_required())
    # nothing extra in the proto: plain fields + oneof groups == pydantic fields
    oneof_members = {f.name for o in desc.oneofs if not o.name.startswith("_") for f in o.fields}
    proto_names = {f for f in desc.fields_by_name if f not in oneof_members}
    proto_names |= {o.name for o in desc.oneofs if not o.name.startswith("_")}
    assert proto_names == set(shapes), f"{name}: proto fields differ"


# ----------------------------------------------------------------- round trips
def _bounds(info: Any) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo = m.gt
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Lt):
            hi = m.lt
    return lo, hi


_PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def _value(shape: Shape, info: Any, annotation: Any, variant: int) -> Any:
    """A valid, non-default value of a field (``variant`` picks among union members)."""
    kind = shape.kind
    if kind == "scalar":
        tp = shape.scalar
        literal = _literal_values(annotation)
        if literal:
            return literal[-1]
        if tp is bool:
            return not bool(info.default) if info.default in (True, False) else True
        if tp is bytes:
            return _PNG
        if tp is str:
            return "a photo of a cat, ü 猫"
        lo, hi = _bounds(info) if info is not None else (None, None)
        if tp is int:
            v = 3 if lo is None else int(lo) + 2
            return min(v, int(hi)) if hi is not None else v
        v = 0.123456789012345 if lo is None else float(lo) + 0.123456789012345
        return min(v, float(hi)) if hi is not None else v
    if kind == "json":
        obj = {"a": [1, 2.5, "s", None, True], "b": {"c": -3}}
        # a list of free-form objects (ScoreRequest.metadata: one per image, 2 images)
        return [obj, None] if get_origin(_strip(annotation)) is list else obj
    if kind == "model":
        assert shape.model is not None
        return _example(shape.model, variant)
    if kind == "union":
        cls = shape.members[variant % len(shape.members)][1]
        return _example(cls, variant)
    assert shape.inner is not None
    inner_ann = _inner_annotation(annotation)
    if kind == "list" and shape.inner.kind == "loc":  # error location: names and indices
        return ["body", "groups", 2, "images", 0]
    if kind == "list":
        return [_value(shape.inner, None, inner_ann, variant) for _ in range(2)]
    if kind == "dict":
        return {"pickscore": _value(shape.inner, None, inner_ann, variant)}
    raise AssertionError(shape)


def _strip(annotation: Any) -> Any:
    from typing import Annotated, Union

    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or (origin is not None and "UnionType" in str(origin)):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    ann = _strip(annotation)
    return get_args(ann) if get_origin(ann) is Literal else ()


def _inner_annotation(annotation: Any) -> Any:
    ann = _strip(annotation)
    args = get_args(ann)
    return args[-1] if args else Any


# Models whose validators tie fields together get their values here instead.
_OVERRIDES: dict[str, dict[str, Any]] = {
    "DiversityGroup": {"embeddings": None, "quality": [0.5, -1.25]},
    "MetricsGroup": {"embeddings": None},
    "DiverseGRPOParams": {"sigma_mode": "fixed", "sigma": 0.25, "k_mode": "fixed", "k": 3},
}


# ... and the models that need one of several optional fields, their least input.
_MINIMAL_EXTRA: dict[str, dict[str, Any]] = {
    "DiversityGroup": {"images": [_PNG]},
    "MetricsGroup": {"images": [_PNG]},
}


def _example(model: type[BaseModel], variant: int = 0, minimal: bool = False) -> BaseModel:
    data: dict[str, Any] = {}
    for name, (shape, info) in field_shapes(model).items():
        if minimal and not info.is_required():
            continue
        data[name] = _value(shape, info, info.annotation, variant)
    if minimal:
        data.update(_MINIMAL_EXTRA.get(model.__name__, {}))
    for name, value in _OVERRIDES.get(model.__name__, {}).items():
        if minimal and name not in data:
            continue
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    if "prompts" in data and "images" in data:  # ScoreRequest: one prompt per image
        data["prompts"] = ["p"] * len(data["images"])
    return model.model_validate(data)


def _round_trip(instance: BaseModel) -> BaseModel:
    wire = to_proto(instance).SerializeToString()
    msg = message_class(type(instance))()
    msg.ParseFromString(wire)
    return from_proto(msg, type(instance))


def _variants(model: type[BaseModel]) -> int:
    counts = [len(s.members) for s, _ in field_shapes(model).values() if s.kind == "union"]
    return max(counts, default=1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_message_round_trips_with_all_fields_set(name: str) -> None:
    model = MODELS[name]
    for variant in range(_variants(model)):
        instance = _example(model, variant)
        back = _round_trip(instance)
        assert back == instance
        assert back.model_fields_set == instance.model_fields_set
        assert back.model_dump() == instance.model_dump()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_message_round_trips_with_only_required_fields(name: str) -> None:
    model = MODELS[name]
    instance = _example(model, minimal=True)
    back = _round_trip(instance)
    assert back == instance
    assert back.model_fields_set == instance.model_fields_set


def test_partial_params_keep_which_fields_the_caller_set() -> None:
    # The server merges request params over its config by model_fields_set: a field the
    # caller did not set must stay unset through protobuf, even if it has a default.
    req = schema.RewardsRequest.model_validate(
        {
            "groups": [{"prompt": "p", "images": [b"x"]}],
            "diversity": {"method": "drift", "lam": 0.25},
            "quality": {"pickscore": 1.0, "hpsv21": 0.5},
        }
    )
    back = _round_trip(req)
    assert isinstance(back, schema.RewardsRequest)
    assert isinstance(back.diversity, schema.DriftParams)
    assert back.diversity.model_fields_set == {"method", "lam"}
    assert back.diversity.lam == 0.25
    assert back.quality == {"pickscore": 1.0, "hpsv21": 0.5}
    assert back.advantage is None and back.request_id is None


def test_none_and_empty_lists_stay_distinct() -> None:
    none = schema.ScoreRequest(prompts=["p"], images=[b"x"], scorers=None)
    assert _round_trip(none).scorers is None  # type: ignore[attr-defined]
    group = schema.DiversityGroupResult(size=2, method="drift", diversity=[], intrinsic=None)
    back = _round_trip(group)
    assert back.diversity == [] and back.intrinsic is None  # type: ignore[attr-defined]


def test_images_travel_as_raw_bytes_and_floats_exactly() -> None:
    raw = _PNG
    msg = to_proto(schema.EmbedRequest(images=[raw, raw[:10]]))
    assert list(msg.images) == [raw, raw[:10]]  # type: ignore[attr-defined]
    values = [0.1, 1 / 3, -2.5e-300, 1e300, 0.0]
    res = schema.EmbedResponse(embeddings=[values], dim=5, model=_example(schema.ModelCard))  # type: ignore[arg-type]
    assert _round_trip(res).embeddings == [values]  # type: ignore[attr-defined]


def test_invalid_protobuf_input_fails_pydantic_validation_naming_the_field() -> None:
    msg = pb.ScoreRequest(prompts=["a", "b"], images=[b"x"])
    with pytest.raises(ValidationError, match="prompts has 2 entries but images has 1"):
        from_proto(msg, schema.ScoreRequest)
    bad = pb.RewardsRequest(groups=[pb.RewardGroup(prompt="p", images=[b"x"])])
    bad.drift.lam = -1.0
    with pytest.raises(ValidationError, match=r"diversity\.drift\.lam"):
        from_proto(bad, schema.RewardsRequest)
    with pytest.raises(ValidationError, match="group_id"):
        from_proto(pb.GroupSubmission(prompt="p", images=[b"x"]), schema_stream.GroupSubmission)
