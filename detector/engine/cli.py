"""The one argument style of ``tools/*.py``: Hydra composition over ``configs/<tool>.yaml``.

Every tool takes ``key=value`` overrides of its config (Hydra's grammar), and every bad argument
ends as one line ``focaldet: config error: ...`` on stderr and exit code 2. Two kinds of tool:

- tools that write a run directory (train, evaluate, infer, loss_cdf) keep ``@hydra.main``, and
  call :func:`preflight_argv` first, so that a bad override stops them before Hydra makes folders;
- the others (benchmark, convert_*, make_synthetic, validate_dataset, report) call
  :func:`run_tool`, which composes the config with Hydra's compose API (no output folder, no
  logging set-up), types it and calls the tool's function with it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from detector.engine.config import ConfigError, _typed, exit_on_config_error
from detector.engine.preflight import preflight, quote_path_arguments

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
"""The repository's ``configs/``: ``configs/<tool>.yaml`` is each tool's primary config."""

HELP_FLAGS = ("-h", "--help")


def preflight_argv(
    tool: str,
    validate: Callable[[DictConfig], object],
    path_keys: Sequence[str] = (),
) -> None:
    """Before ``@hydra.main``: quote the ``path_keys`` values of ``sys.argv`` for Hydra's grammar
    and compose and ``validate`` every job of the command line; exit 2 with one line if one is
    bad."""
    sys.argv[1:] = quote_path_arguments(sys.argv[1:], path_keys)
    exit_on_config_error(preflight, sys.argv[1:], CONFIG_DIR, tool, validate)


def compose_tool(
    tool: str, argv: Sequence[str], path_keys: Sequence[str] = (), filled_later: Sequence[str] = ()
) -> DictConfig:
    """``configs/<tool>.yaml`` with the overrides ``argv``; :class:`ConfigError` when an override
    is malformed or unknown, or a required (``???``) key other than ``filled_later`` (keys the
    tool fills itself, e.g. ``model.head.num_classes`` from the dataset) is left unset."""
    composed: list[DictConfig] = []
    # preflight composes the job and turns Hydra's errors into one line; it hands us the config.
    try:
        preflight(quote_path_arguments(argv, path_keys), CONFIG_DIR, tool, composed.append)
    except ConfigError as e:
        unknown = _UNKNOWN_KEY.match(str(e))
        if unknown is None:
            raise
        raise ConfigError(f"unknown key {unknown[1]!r} ({_known_keys(tool, unknown[1])})") from None
    if len(composed) != 1:
        raise ConfigError(f"expected key=value arguments, got {' '.join(argv)!r}")
    cfg = composed[0]
    for key in sorted(OmegaConf.missing_keys(cfg) - set(filled_later)):
        raise ConfigError(f"{key} is not set: pass {key}=VALUE")
    return cfg


_UNKNOWN_KEY = re.compile(r"^([^\s:]+): no such key in the config")
"""preflight's line for an override of a key the config does not have."""


def _known_keys(tool: str, key: str) -> str:
    """The keys beside ``key`` in ``configs/<tool>.yaml``, as "choose from ..."."""
    composed: list[DictConfig] = []
    preflight([], CONFIG_DIR, tool, composed.append)
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(composed[0], parent) if parent else composed[0]
    if not isinstance(node, DictConfig):
        return f"{parent} has no keys"
    prefix = f"{parent}." if parent else ""
    return "choose from " + ", ".join(prefix + str(k) for k in node)


def typed_config(schema: type, cfg: DictConfig, name: str) -> Any:
    """``cfg`` as an instance of the dataclass ``schema`` (a wrong type or an unknown key is a
    :class:`ConfigError` naming ``name.key``)."""
    return _typed(schema, cfg, name)


def _schema_of(fn: Callable[..., Any]) -> type:
    """A dataclass of ``fn``'s keyword parameters, their annotations and defaults."""
    hints = typing.get_type_hints(fn)
    fields = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            continue
        kind = hints.get(param.name, Any)
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = Any  # OmegaConf types no unions (str | Path): the function checks those
        default = dataclasses.MISSING if param.default is param.empty else param.default
        fields.append((param.name, kind, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{fn.__module__}.{fn.__name__}", fields)


def typed_kwargs(fn: Callable[..., Any], node: DictConfig, name: str) -> dict[str, Any]:
    """The keys of ``node`` as keyword arguments of ``fn``, converted to its annotated types;
    :class:`ConfigError` naming ``name.key`` for a key ``fn`` does not take or a wrong type."""
    instance = typed_config(_schema_of(fn), node, name)
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def run_tool(
    tool: str,
    main: Callable[[DictConfig], int | None],
    argv: Sequence[str],
    doc: str,
    path_keys: Sequence[str] = (),
    filled_later: Sequence[str] = (),
) -> int:
    """A tool without a run directory: ``--help`` prints ``doc``; otherwise compose
    ``configs/<tool>.yaml`` with ``argv`` and return ``main(cfg)`` (None counts as 0). A
    :class:`ConfigError`, raised while composing or by ``main``, prints one line and returns 2."""
    if any(arg in HELP_FLAGS for arg in argv):
        print(doc.strip())
        return 0
    try:
        return main(compose_tool(tool, argv, path_keys, filled_later)) or 0
    except ConfigError as e:
        print(f"focaldet: config error: {e}", file=sys.stderr)
        return 2
