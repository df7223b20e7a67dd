"""Model families by name, imported lazily: importing this module loads no model code.

Adding a family is one file (a :class:`~divreward.trainer.models.base.DiffusionAdapter`
subclass) and one line in :data:`ADAPTERS`; a test fails if a registered family has no
tiny-model test entry. A dotted ``"package.module:Class"`` is accepted as well, for
adapters that live outside this package.
"""

from __future__ import annotations

import importlib

from divreward.trainer.models.base import DiffusionAdapter

__all__ = ["ADAPTERS", "get_adapter"]

ADAPTERS: dict[str, str] = {
    "sd3": "divreward.trainer.models.sd3:SD3Adapter",
    "flux": "divreward.trainer.models.flux:FluxAdapter",
    "toy": "divreward.trainer.models.toy:ToyAdapter",
}


def get_adapter(name: str) -> type[DiffusionAdapter]:
    """The adapter class of family ``name`` (or of a ``"module:Class"`` path)."""
    target = ADAPTERS.get(name)
    if target is None:
        if ":" not in name:
            raise KeyError(
                f"unknown model family {name!r}; known: {sorted(ADAPTERS)} "
                "(or give a 'package.module:Class' path)"
            )
        target = name
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise KeyError(f"model family {name!r}: cannot import {target!r} ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, DiffusionAdapter)):
        raise TypeError(f"model family {name!r}: {target!r} is not a DiffusionAdapter subclass")
    return cls
