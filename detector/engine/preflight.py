"""Every job of a command line composed and validated before anything runs.

:func:`preflight` composes each job of a Hydra command line (each point of a ``-m`` sweep) with
Hydra's compose API and calls a validator of :mod:`detector.engine.config` on it; Hydra's own
errors become the one-line :class:`~detector.engine.config.ConfigError` too, with the reason
Hydra leaves out (``Could not override 'train.lr'`` says neither that the key does not exist nor
which key was meant). :func:`quote_path_arguments` makes paths safe for Hydra's grammar.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from detector.engine.config import ConfigError, _one_line, validate_config


def _group_error(e: MissingConfigException) -> str:
    missing = e.missing_cfg_file or ""
    if "/" in missing and e.options:
        group, option = missing.rsplit("/", 1)
        return f"unknown {group} {option!r} (choose from {', '.join(sorted(e.options))})"
    return _one_line(str(e).splitlines()[0])


def _composition_error(e: Exception, config_name: str, job: Sequence[str]) -> str:
    """One line for a failed composition: for an override of a key that does not exist, which
    key it names, that it does not exist, and the existing keys it may have meant."""
    if not (
        isinstance(e, ConfigCompositionException)
        and isinstance(e.__cause__, (ConfigAttributeError, ConfigKeyError))
    ):
        return _one_line(str(e).splitlines()[0])
    key = e.__cause__.full_key
    others = [o for o in job if o.lstrip("+~").partition("=")[0] != key]
    try:
        known = _leaf_keys(compose(config_name=config_name, overrides=others))
    except (HydraException, OmegaConfBaseException):
        known = []
    leaf = key.rpartition(".")[2]
    meant = [k for k in known if k.rpartition(".")[2] == leaf]
    meant = meant or difflib.get_close_matches(key, known, n=3, cutoff=0.8)
    hint = f"; did you mean {' or '.join(meant)}?" if meant else f" (to add it: +{key}=...)"
    return f"{key}: no such key in the config{hint}"


def _leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted paths of every key of ``node`` (lists are leaves)."""
    out = []
    for key in node.keys():  # noqa: SIM118 - keys() lists ??? (missing) values too
        path = f"{prefix}{key}"
        value = node._get_node(key)  # noqa: SLF001 - the raw node: no interpolation resolved
        out += _leaf_keys(value, f"{path}.") if isinstance(value, DictConfig) else [path]
    return out


def preflight(
    argv: Sequence[str],
    config_dir: Path,
    config_name: str,
    validate: Callable[[DictConfig], object] = validate_config,
) -> None:
    """Compose and validate every job that ``argv`` (a Hydra command line) would run.

    Hydra's own flags and ``hydra.*`` overrides are left to Hydra. A command line that Hydra's
    argument parser rejects is also left to Hydra, which reports it itself.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        args = get_args_parser().parse_args(list(argv))
    except SystemExit:
        return
    if args.help or args.hydra_help or args.info or args.shell_completion or args.cfg:
        return  # Hydra prints help or the config (--cfg job shows even an incomplete one)
    config_name = args.config_name or config_name
    user = [o for o in args.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        parsed = OverridesParser.create().parse_overrides(user)
    except HydraException as e:
        raise ConfigError(_one_line(str(e))) from None
    if args.multirun:
        jobs = list(itertools.chain.from_iterable(BasicSweeper.split_arguments(parsed, None)))
    else:
        jobs = [user]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        for job in jobs:
            try:
                cfg = compose(config_name=config_name, overrides=list(job))
            except MissingConfigException as e:
                raise ConfigError(_group_error(e)) from None
            except (HydraException, OmegaConfBaseException) as e:
                raise ConfigError(_composition_error(e, config_name, job)) from None
            validate(cfg)


_PLAIN_PATH = re.compile(r"[A-Za-z0-9_./~+-]*")


def _hydra_quote(value: str) -> str:
    """``value`` as a single-quoted Hydra string: a backslash is literal unless it precedes a
    quote, so quotes are escaped and the backslashes before a quote or the end are doubled."""
    value = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    value = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, value)
    return f"'{value}'"


def quote_path_arguments(argv: Sequence[str], keys: Sequence[str]) -> list[str]:
    """``argv`` with the values of ``key=PATH`` arguments quoted for Hydra's override grammar.

    Hydra parses every override's value, so a path holding its grammar's characters fails with a
    parse error; the folders of a multirun sweep do (``5_loss={gamma:2.0,alpha:0.25},
    train.seed=0``). A value of ``keys`` that is not already quoted and is more than letters,
    digits and ``_./~+-`` is single-quoted.
    """
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in keys and value[:1] not in ("'", '"') and not _PLAIN_PATH.fullmatch(value):
            arg = f"{key}={_hydra_quote(value)}"
        out.append(arg)
    return out
