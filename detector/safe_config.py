"""Build ``_target_`` trees read from files (checkpoints) without letting the file run code.

A checkpoint is read with ``torch.load(weights_only=True)``, so unpickling cannot run code; its
``model_config``, ``postprocess_config`` and the evaluation transforms of its training ``config``
are ``_target_`` trees, and building those with ``hydra.utils.instantiate`` would import and call
whatever they name (``builtins.open``, ``os.system``…). Here a tree is checked whole against an
:class:`Allowlist` before anything is built, and then built without Hydra: each ``_target_`` is
looked up in the allow-list (never imported by name) and called with keyword arguments. Nothing
else in a tree is interpreted: no interpolation is resolved and no other string is imported.

Rejected, with one :class:`UnsafeConfigError` line naming the place in the tree
(``model_config.backbone._target_: ...``):

- a ``_target_`` that is not on the allow-list, at any depth, inside lists too;
- Hydra's other reserved keys (``_args_``, ``_partial_``, ``_recursive_``, ``_convert_``, any
  ``_name_``): focaldet's classes take keyword arguments only, so none is needed;
- interpolations (a string holding ``${``): a file's values are data, never resolved;
- keys that are not strings and values that are not ``None``, bools, numbers, strings, lists or
  mappings.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detector.anchors import AnchorGenerator
from detector.backbone import ResNetBackbone
from detector.box_coder import BoxCoder
from detector.fpn import FPN
from detector.head import RetinaNetHead
from detector.postprocess import RetinaNetPostProcessor
from detector.retinanet import RetinaNet

TARGET = "_target_"

_RESERVED_KEY = re.compile(r"^_.*_$")
"""Hydra's reserved keys look like this (``_args_``, ``_partial_``); only ``_target_`` passes."""

_ATTRIBUTE_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")
"""Dotted public names only: no ``__builtins__``, ``__class__`` or other dunder walks."""

_SCALARS = (str, bool, int, float, type(None))


class UnsafeConfigError(ValueError):
    """A ``_target_`` tree from a file names something focaldet does not build from files."""


def names_of(package: str, *classes: type) -> dict[str, type]:
    """``{"package.Name": cls, "module.Name": cls}`` for each class: both spellings of a target."""
    names = {}
    for cls in classes:
        names[f"{package}.{cls.__name__}"] = cls
        names[f"{cls.__module__}.{cls.__name__}"] = cls
    return names


@dataclass(frozen=True)
class Allowlist:
    """The classes a tree may name.

    ``classes`` maps each accepted ``_target_`` string to its class. ``package`` (with
    ``package_bases``) also accepts any public class of an already imported package that
    subclasses one of the bases and is defined in it, found by walking attributes from the
    package module (a name outside the package is never imported); ``denied`` are excluded.
    ``what`` names the list in error messages.
    """

    what: str
    classes: Mapping[str, type]
    package: str | None = None
    package_bases: tuple[type, ...] = ()
    denied: tuple[type, ...] = field(default=())

    def resolve(self, name: str) -> type | None:
        """The class ``name`` stands for, or ``None`` when it is not allowed."""
        if name in self.classes:
            return self.classes[name]
        if self.package is None or not name.startswith(f"{self.package}."):
            return None
        if not _ATTRIBUTE_PATH.match(name):
            return None
        obj: Any = importlib.import_module(self.package)  # the package, named by code, not file
        for part in name.split(".")[1:]:
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        if (
            inspect.isclass(obj)
            and issubclass(obj, self.package_bases)
            and obj.__module__.startswith(f"{self.package}.")
            and not issubclass(obj, self.denied)
        ):
            return obj
        return None


MODEL_TARGETS = Allowlist(
    "focaldet model classes",
    names_of("detector", RetinaNet, ResNetBackbone, FPN, RetinaNetHead, AnchorGenerator),
)
"""What a checkpoint's ``model_config`` may name."""

POSTPROCESS_TARGETS = Allowlist(
    "focaldet post-processing classes", names_of("detector", RetinaNetPostProcessor, BoxCoder)
)
"""What a checkpoint's ``postprocess_config`` may name."""


def check_config(tree: Any, allowed: Allowlist, where: str) -> None:
    """Raise :class:`UnsafeConfigError` unless every node of ``tree`` is allowed.

    ``where`` is the tree's name in messages (``model_config``); nested places are appended as
    ``.key`` and ``[index]``.
    """
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise UnsafeConfigError(f"{where}: key {key!r} is not a string")
            place = f"{where}.{key}"
            if key == TARGET:
                if not isinstance(value, str) or allowed.resolve(value) is None:
                    raise UnsafeConfigError(
                        f"{place}: {value!r} is not an allowed target (only {allowed.what} "
                        "are built from a file)"
                    )
            elif _RESERVED_KEY.match(key):
                raise UnsafeConfigError(f"{place}: Hydra's {key} is not accepted from a file")
            _check_interpolation(key, where)
            check_config(value, allowed, place)
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            check_config(value, allowed, f"{where}[{index}]")
    elif isinstance(tree, str):
        _check_interpolation(tree, where)
    elif not isinstance(tree, _SCALARS):
        raise UnsafeConfigError(
            f"{where}: a {type(tree).__name__} is not a config value (None, bool, number, "
            "string, list or mapping)"
        )


def _check_interpolation(text: str, where: str) -> None:
    if "${" in text:
        raise UnsafeConfigError(
            f"{where}: {text!r} is an interpolation; values read from a file are never resolved"
        )


def build_config(
    tree: Any,
    allowed: Allowlist,
    where: str,
    cleared: Mapping[type, tuple[str, ...]] | None = None,
) -> Any:
    """Check ``tree`` (:func:`check_config`), a mapping with a ``_target_``, then build it.

    Each mapping with a ``_target_`` becomes ``cls(**built arguments)``; other mappings become
    dicts and lists stay lists, their members built the same way (Hydra's ``_convert_="all"``).
    ``cleared`` maps a class to arguments passed as ``None`` whatever the tree says (e.g. a
    backbone's pretrained weights, which a checkpoint's own state dict replaces).
    """
    if not isinstance(tree, Mapping) or TARGET not in tree:
        raise UnsafeConfigError(f"{where}: expected a mapping with a _target_, got {tree!r:.80}")
    check_config(tree, allowed, where)
    return _build(tree, allowed, cleared or {})


def _build(tree: Any, allowed: Allowlist, cleared: Mapping[type, tuple[str, ...]]) -> Any:
    if isinstance(tree, Mapping):
        built = {k: _build(v, allowed, cleared) for k, v in tree.items() if k != TARGET}
        if TARGET not in tree:
            return built
        cls = allowed.resolve(tree[TARGET])
        for name in cleared.get(cls, ()):
            if name in built:
                built[name] = None
        return cls(**built)
    if isinstance(tree, (list, tuple)):
        return [_build(v, allowed, cleared) for v in tree]
    return tree
