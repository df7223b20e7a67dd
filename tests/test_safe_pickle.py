"""The allow-list unpickler: plain data round-trips under every protocol; any payload
that names another global is refused before it runs (checked with a marker file that
the payload would create)."""

from __future__ import annotations

import copyreg
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from divreward.safe_pickle import PickleDecodeError, UnsafePickleError, safe_dumps, safe_loads

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
_hashable = st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=8), children, max_size=5)
        | st.sets(_hashable, max_size=5)
        | st.frozensets(_hashable, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(value=_values, protocol=st.integers(min_value=0, max_value=5))
def test_plain_data_round_trips_under_every_protocol(value: object, protocol: int) -> None:
    assert safe_loads(pickle.dumps(value, protocol=protocol)) == value


@pytest.mark.parametrize("protocol", range(6))
def test_protocol_specific_encodings_of_allowed_types(protocol: int) -> None:
    # Protocols 0-2 spell bytes as _codecs.encode(str, "latin1") and b"" as bytes(()),
    # sets as builtins.set(list), complex as builtins.complex(re, im).
    value = {
        "images": [b"\x89PNG\r\n\x1a\n\x00\xff", b""],
        "ba": bytearray(b"\x00\x01"),
        "s": {1, 2},
        "fs": frozenset({"a"}),
        "c": 1.5 - 2j,
        "prompts": ["a cat", "ü"],
        "metadata": {},
    }
    out = safe_loads(pickle.dumps(value, protocol=protocol))
    assert out == value
    assert type(out["ba"]) is bytearray and type(out["images"][0]) is bytes


class _RunsShell:
    """Pickles to ``os.system(cmd)``: the classic remote-code-execution payload."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.cmd,))


class _RunsPopen:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def __reduce__(self) -> tuple[object, tuple[list[str]]]:
        return (subprocess.Popen, (self.argv,))


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("nesting", ["top", "in_list", "in_dict", "deep"])
def test_os_system_reduce_is_refused_and_never_runs(
    marker: Path, protocol: int, nesting: str
) -> None:
    evil: object = _RunsShell(f"touch {marker}")
    wrapped = {
        "top": evil,
        "in_list": [b"jpeg", evil],
        "in_dict": {"images": [b"x"], "metadata": {"k": evil}},
        "deep": {"a": [{"b": ({"c": [evil]},)}]},
    }[nesting]
    payload = pickle.dumps(wrapped, protocol=protocol)
    with pytest.raises(UnsafePickleError, match=r"global posix\.system.* not allowed") as info:
        safe_loads(payload)
    assert (info.value.module, info.value.name) == ("posix", "system")
    assert not marker.exists()
    # Sanity check of the test itself: the payload really is live under plain pickle.
    assert b"system" in payload


def test_the_payload_is_live_under_plain_pickle(marker: Path) -> None:
    # Proves the refusal above is meaningful: plain pickle.loads runs the command.
    pickle.loads(pickle.dumps(_RunsShell(f"touch {marker}")))
    assert marker.exists()


def test_subprocess_popen_is_refused(marker: Path) -> None:
    payload = pickle.dumps({"x": _RunsPopen(["touch", str(marker)])})
    with pytest.raises(UnsafePickleError, match=r"subprocess\.Popen"):
        safe_loads(payload)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, module, name",
    [
        # protocol 0 GLOBAL + REDUCE
        (b"cos\nsystem\n(S'touch {m}'\ntR.", "os", "system"),
        # protocol 0 INST opcode: calls the class/callable directly
        (b"(S'touch {m}'\nios\nsystem\n.", "os", "system"),
        # Python 2 module name, mapped by fix_imports before the check
        (
            b'c__builtin__\neval\n(S\'__import__("os").system("touch {m}")\'\ntR.',
            "builtins",
            "eval",
        ),
        (b"cbuiltins\ngetattr\n(cbuiltins\nglobals\n)RS'x'\ntR.", "builtins", "getattr"),
        (b"cbuiltins\n__import__\n(S'os'\ntR.", "builtins", "__import__"),
    ],
)
def test_handcrafted_global_opcodes_are_refused(
    marker: Path, payload: bytes, module: str, name: str
) -> None:
    data = payload.replace(b"{m}", str(marker).encode())
    with pytest.raises(UnsafePickleError) as info:
        safe_loads(data)
    assert (info.value.module, info.value.name) == (module, name)
    assert not marker.exists()


def test_protocol4_stack_global_and_obj_opcode_are_refused(marker: Path) -> None:
    # STACK_GLOBAL ("\x93") then NEWOBJ: the protocol-4 way of naming a class.
    data = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x05touch\x94\x85\x94R\x94."
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        safe_loads(data)
    # OBJ opcode ("o"): MARK, class, args, OBJ
    data0 = b"(cos\nsystem\nS'touch " + str(marker).encode() + b"'\no."
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        safe_loads(data0)
    assert not marker.exists()


def test_numpy_arrays_are_refused() -> None:
    # Not code execution, but not plain data either: the dialect sends encoded images.
    with pytest.raises(UnsafePickleError, match=r"numpy"):
        safe_loads(pickle.dumps({"images": [np.zeros((2, 2), np.uint8)]}))


def test_extension_registry_goes_through_the_allow_list(marker: Path) -> None:
    module = os.system.__module__  # "posix" on Linux
    copyreg.add_extension(module, "system", 0x7FFF_FFF0)
    try:
        data = pickle.dumps(os.system, protocol=2)
        assert data[2:3] == b"\x84"  # EXT4: no module or name in the bytes at all
        with pytest.raises(UnsafePickleError, match=r"posix\.system"):
            safe_loads(data)
    finally:
        copyreg.remove_extension(module, "system", 0x7FFF_FFF0)
    # an unregistered extension code is malformed input, not a crash
    with pytest.raises(PickleDecodeError, match="not a valid pickle"):
        safe_loads(b"\x80\x02\x82\x05.")


def test_persistent_ids_are_refused() -> None:
    with pytest.raises(UnsafePickleError, match="persistent_id"):
        safe_loads(b"Pfoo\n.")


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"cbuiltins\nbytearray\n(J\x00\x10\xa5\xd4tR.", "bytearray\\(\\) expects bytes"),
        (b"c_codecs\nencode\n(Vx\nVzlib\ntR.", "only as pickle uses it"),
        (b"cbuiltins\nbytes\n(I1000000000000\ntR.", "bytes\\(\\) expects bytes"),
        (b"cbuiltins\nset\n(S'abc'\ntR.", "set\\(\\) expects a list"),
    ],
)
def test_allowed_constructors_accept_only_what_pickle_writes(payload: bytes, message: str) -> None:
    with pytest.raises(PickleDecodeError, match=message):
        safe_loads(payload)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is empty"),
        (b"\x80\x04\x95", "not a valid pickle"),
        (b"not a pickle at all", "not a valid pickle"),
        (pickle.dumps({"a": 1})[:-1], "not a valid pickle"),
    ],
)
def test_malformed_input_is_a_value_error_naming_the_input(data: bytes, message: str) -> None:
    with pytest.raises(PickleDecodeError, match=f"request body: {message}"):
        safe_loads(data, what="request body")
    assert issubclass(PickleDecodeError, ValueError) and issubclass(UnsafePickleError, ValueError)


def test_non_bytes_input_is_refused() -> None:
    with pytest.raises(PickleDecodeError, match="expected bytes, got str"):
        safe_loads("(dp0\n.")  # type: ignore[arg-type]


def test_safe_dumps_refuses_numpy_scalars_in_replies() -> None:
    assert safe_loads(safe_dumps({"scores": [0.5, 1.0]})) == {"scores": [0.5, 1.0]}
    with pytest.raises(UnsafePickleError, match="numpy"):
        safe_dumps({"scores": [np.float64(0.5)]})
