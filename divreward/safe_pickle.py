"""An allow-list unpickler for the pickle wire dialects that peer trainers speak.

Flow-GRPO, ddpo-pytorch and verl-omni/deepgen clients send ``pickle.dumps(dict)``
bodies. A plain ``pickle.loads`` on such a body runs whatever callable the sender names
(``os.system`` through ``__reduce__``, ``builtins.eval``, ...): anyone who can reach the
port runs code on the host. :func:`safe_loads` decodes only plain data:

- values that pickle encodes with dedicated opcodes and no global lookup: ``dict``,
  ``list``, ``tuple``, ``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None`` and,
  from protocol 4/5, ``set``, ``frozenset``, ``bytearray``;
- the handful of builtin constructors that protocols 0-2 reach through a global
  (``builtins.set``, ``frozenset``, ``bytearray``, ``bytes``, ``complex`` and
  ``_codecs.encode`` with the ``latin1`` codec, which is how protocols 0-2 spell
  ``bytes``); each is replaced by a checked wrapper that accepts only the argument types
  pickle itself produces, so that e.g. ``bytearray(10**12)`` cannot allocate.

Every other global, persistent id or extension code raises :class:`UnsafePickleError`
*before* anything is called, so a refused payload never executes. Malformed input
raises :class:`PickleDecodeError`. Both are ``ValueError`` subclasses that services map
to a 4xx response.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["PickleDecodeError", "UnsafePickleError", "safe_dumps", "safe_loads"]


class UnsafePickleError(ValueError):
    """The pickle asks for a global (callable or class) outside the allow-list."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name
        super().__init__(
            f"pickle refers to the global {module}.{name}, which is not allowed: only "
            "builtin containers (dict, list, tuple, set, frozenset), str, bytes, bytearray, "
            "int, float, complex, bool and None may be sent"
        )


class PickleDecodeError(ValueError):
    """The bytes are not a well-formed pickle of allowed values."""


def _safe_set(items: Iterable[Any] = ()) -> set[Any]:
    if not isinstance(items, list | tuple | set | frozenset):
        raise PickleDecodeError(f"set() expects a list of items, got {type(items).__name__}")
    return set(items)


def _safe_frozenset(items: Iterable[Any] = ()) -> frozenset[Any]:
    if not isinstance(items, list | tuple | set | frozenset):
        raise PickleDecodeError(f"frozenset() expects a list of items, got {type(items).__name__}")
    return frozenset(items)


def _safe_bytes(data: bytes | None = None) -> bytes:
    # Pickle writes bytes(()) for b"" in protocols 0-2; bytes(int) would allocate.
    if data is None:
        return b""
    if not isinstance(data, bytes | bytearray):
        raise PickleDecodeError(f"bytes() expects bytes, got {type(data).__name__}")
    return bytes(data)


def _safe_bytearray(data: bytes | None = None) -> bytearray:
    if data is None:
        return bytearray()
    if not isinstance(data, bytes | bytearray):
        raise PickleDecodeError(f"bytearray() expects bytes, got {type(data).__name__}")
    return bytearray(data)


def _safe_complex(real: float = 0.0, imag: float = 0.0) -> complex:
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (real, imag)):
        raise PickleDecodeError("complex() expects two numbers")
    return complex(real, imag)


def _safe_codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocols 0-2 pickle bytes as _codecs.encode(str, "latin1"); any other codec
    # (zlib, hex, rot13...) is refused rather than run on untrusted input.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise PickleDecodeError(
            f"_codecs.encode is allowed only as pickle uses it (str, 'latin1'), "
            f"got ({type(text).__name__}, {encoding!r})"
        )
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("builtins", "set"): _safe_set,
    ("builtins", "frozenset"): _safe_frozenset,
    ("builtins", "bytes"): _safe_bytes,
    ("builtins", "bytearray"): _safe_bytearray,
    ("builtins", "complex"): _safe_complex,
    ("_codecs", "encode"): _safe_codecs_encode,
}


class _AllowListUnpickler(pickle.Unpickler):
    """``find_class`` is the only way a pickle reaches a callable; refuse all but a few."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocols 0-2 carry Python 2 names (__builtin__.set); map them as the default
        # find_class would, so the allow-list is checked against Python 3 names.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("<persistent_id>", repr(pid)[:80])


def safe_loads(data: bytes | bytearray | memoryview, *, what: str = "body") -> Any:
    """Decode a pickle of plain data; refuse anything that names a global.

    ``what`` names the input in error messages (e.g. ``"request body"``).
    Raises :class:`UnsafePickleError` for a disallowed global and
    :class:`PickleDecodeError` for anything else that is not a valid pickle.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PickleDecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise PickleDecodeError(f"{what}: is empty, expected a pickled dict")
    try:
        return _AllowListUnpickler(io.BytesIO(bytes(data))).load()
    except (UnsafePickleError, PickleDecodeError):
        raise
    except RecursionError as exc:
        raise PickleDecodeError(f"{what}: pickle nests too deeply") from exc
    except MemoryError as exc:
        raise PickleDecodeError(f"{what}: pickle too large to decode") from exc
    except Exception as exc:  # any failure of a malformed pickle is a 4xx
        raise PickleDecodeError(
            f"{what}: not a valid pickle ({type(exc).__name__}: {exc})"
        ) from exc


def safe_dumps(obj: Any, protocol: int = 4) -> bytes:
    """Pickle a reply, after checking that it contains only data ``safe_loads`` accepts.

    Protocol 4 is readable by every Python >= 3.4, which covers the peer trainers.
    """
    data = pickle.dumps(obj, protocol=protocol)
    safe_loads(data, what="reply")  # refuse to emit anything our own reader would refuse
    return data
