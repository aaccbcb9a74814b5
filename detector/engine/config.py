"""The training configuration: its schema, its validation and the resolvers it uses.

Every error is reported before anything runs, as a :class:`ConfigError` holding one line that names
the key and the problem; :func:`exit_on_config_error` turns it into that line on stderr and exit
code 2. :func:`detector.engine.preflight.preflight` composes every job of a command line (each
point of a ``-m`` sweep) with Hydra's compose API and validates it with these functions, so a bad
sweep point stops the sweep before its first job.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from data.coco import BAD_IMAGE_POLICIES
from data.validate import BAD_BOX_POLICIES
from detector.backbone import RESNET_OUT_CHANNELS
from detector.box_coder import BoxCoder
from detector.engine.loop import LoopSettings
from detector.engine.optim import build_lr_scheduler, build_sgd, scaled_lr
from detector.postprocess import RetinaNetPostProcessor

CONFIG_GROUPS = ("model", "loss", "data", "optim", "train")
"""The defaults list of ``configs/train.yaml``: one level deep, one option per group."""

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range (one-line message)."""


@dataclass
class TrainConfig:
    """Schema of the ``train`` group (``configs/train/*.yaml``)."""

    max_iter: int = 1000
    batch_size: int = 8
    """Images per iteration summed over all processes (the learning rate scales with it)."""
    amp: bool = False
    amp_dtype: str = "bf16"
    device: str = "auto"
    workers: int = 2
    eval_period: int = 0
    """Evaluate every this many iterations (0: only at the end)."""
    checkpoint_period: int = 500
    log_period: int = 20
    seed: int = 0
    resume: bool = False
    skip_nonfinite: int = 0
    """Steps with a non-finite loss to skip before stopping (0: stop at the first)."""
    clip_grad_norm: float | None = None
    sync_bn: bool = True
    """Under DDP on CUDA, turn BatchNorm layers into SyncBatchNorm (CPU DDP keeps them local)."""
    vis_images: int = 4
    """Validation images drawn with predicted and ground-truth boxes in TensorBoard at each eval."""
    vis_score_thresh: float = 0.3
    progress: bool = True
    compile: bool = False  # torch.compile the network (detector/engine/compile.py)
    compile_backend: str = "inductor"  # or aot_eager / eager (no code generation: tests)


@dataclass
class OptimConfig:
    """Schema of the ``optim`` group: SGD with linear warmup and step decay (§4.1, Training)."""

    lr: float = 0.01
    base_batch_size: int = 16
    """The batch ``lr`` is quoted for; the run uses ``lr * train.batch_size / base_batch_size``."""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    steps: list[float] = field(default_factory=lambda: [2 / 3, 8 / 9])
    """Decay points as fractions of ``train.max_iter`` (the paper's 60k and 80k of 90k)."""
    gamma: float = 0.1


def _resnet_channels(depth: int) -> ListConfig:
    if int(depth) not in RESNET_OUT_CHANNELS:
        raise ValueError(f"no ResNet of depth {depth} (choose from {sorted(RESNET_OUT_CHANNELS)})")
    return ListConfig(RESNET_OUT_CHANNELS[int(depth)])


def _num_anchors(scales: ListConfig, ratios: ListConfig) -> int:
    return len(scales) * len(ratios)


def register_resolvers() -> None:
    """Register ``${fd.resnet_channels:DEPTH}`` and ``${fd.num_anchors:SCALES,RATIOS}``.

    The first derives the FPN input channels from ``model.backbone.depth``, so that
    ``model.backbone.depth=18`` alone switches an R50 config to R18; the second keeps the head's
    anchor count equal to the anchor generator's.
    """
    OmegaConf.register_new_resolver("fd.resnet_channels", _resnet_channels, replace=True)
    OmegaConf.register_new_resolver("fd.num_anchors", _num_anchors, replace=True)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _typed(schema: type[_T], node: Any, name: str) -> _T:
    """Merge ``node`` onto the dataclass ``schema``: unknown keys and wrong types fail."""
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{name}: expected a group of settings, got {node!r}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        message = str(e).splitlines()[0]
        raise ConfigError(f"{name}.{key}: {_one_line(message)}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@contextlib.contextmanager
def constructor_errors(prefix: str) -> Iterator[None]:
    """Turn a constructor's ``ValueError`` into the one-line :class:`ConfigError` naming the key.

    The constructors validate their own arguments with messages that start with the argument's
    name (after an optional ``ClassName: ``), which is also its key under ``prefix``:
    ``RetinaNetPostProcessor: nms_thresh must be ...`` becomes ``postprocess.nms_thresh must
    be ...``.
    """
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, InstantiationException) as e:
        # hydra.utils.instantiate wraps the constructor's error; report the constructor's own.
        cause = e.__cause__ if isinstance(e, InstantiationException) else e
        if not isinstance(cause, ValueError):
            raise
        message = re.sub(r"^[A-Z]\w*: ", "", _one_line(str(cause)))
        raise ConfigError(f"{prefix}.{message}") from None


def loop_settings(train: TrainConfig) -> LoopSettings:
    """The training loop's settings from the ``train`` group (``LoopSettings`` checks them)."""
    # Every LoopSettings field is a train key of the same name.
    with constructor_errors("train"):
        return LoopSettings(**{f.name: getattr(train, f.name) for f in fields(LoopSettings)})


def validate_train(cfg: DictConfig) -> TrainConfig:
    """Type- and range-check the ``train`` group."""
    train = _typed(TrainConfig, cfg.train, "train")
    loop_settings(train)
    _check(train.batch_size >= 1, f"train.batch_size must be >= 1, got {train.batch_size}")
    _check(train.workers >= 0, f"train.workers must be >= 0, got {train.workers}")
    _check(train.vis_images >= 0, f"train.vis_images must be >= 0, got {train.vis_images}")
    _check(
        train.amp_dtype in ("bf16", "fp16"),
        f"train.amp_dtype must be bf16 or fp16, got {train.amp_dtype!r}",
    )
    device = train.device
    _check(
        device in ("auto", "cpu", "cuda") or device.startswith("cuda:"),
        f"train.device must be auto, cpu, cuda or cuda:N, got {device!r}",
    )
    _check(
        not device.startswith("cuda") or torch.cuda.is_available(),
        f"train.device={device} but CUDA is not available here (use train.device=auto or cpu)",
    )
    _check(
        not (train.amp and train.amp_dtype == "fp16" and device == "cpu"),
        "train.amp_dtype=fp16 needs CUDA (its GradScaler is CUDA-only); use bf16 on CPU",
    )
    return train


def validate_optim(cfg: DictConfig) -> OptimConfig:
    """Type-check the ``optim`` group; the optimizer and schedule builders check the ranges
    (called here on a one-element parameter)."""
    optim = _typed(OptimConfig, cfg.optim, "optim")
    probe = nn.ParameterList([nn.Parameter(torch.zeros(1))])
    with constructor_errors("optim"):
        scaled_lr(optim.lr, optim.base_batch_size, 1)
        optimizer = build_sgd(probe, optim.lr, optim.momentum, optim.weight_decay)
        build_lr_scheduler(
            optimizer, 1, optim.steps, optim.gamma, optim.warmup_iters, optim.warmup_factor
        )
    return optim


def validate_loss(cfg: DictConfig) -> None:
    """The ``loss`` node must name an importable class, hold numbers, and build (the loss's
    constructor checks gamma and alpha)."""
    loss = cfg.loss
    _check(
        isinstance(loss, DictConfig) and "_target_" in loss,
        "loss: expected a node with a _target_ (choose loss=focal or loss=ce)",
    )
    try:
        get_class(loss._target_)
    except Exception:  # noqa: BLE001 - Hydra raises several types for an unimportable path
        raise ConfigError(f"loss._target_: unknown loss class {loss._target_!r}") from None
    for key, value in loss.items():
        if key == "_target_":
            continue
        _check(
            value is None or isinstance(value, (int, float)) and not isinstance(value, bool),
            f"loss.{key} must be a number, got {value!r}",
        )
    with constructor_errors("loss"):
        instantiate(loss)


def validate_data(cfg: DictConfig, splits: Sequence[str] = ("train", "val")) -> None:
    """Data paths of ``splits`` must be set, and exist unless the dataset is generated
    (``data.generate``); their batch sizes and the bad-box and bad-image policies are checked."""
    data = cfg.data
    generated = data.get("generate") is not None
    # `in data` is False for a key whose value is ??? (missing); keys() lists it.
    if "root" in data.keys() and OmegaConf.is_missing(data, "root"):  # noqa: SIM118
        raise ConfigError("data.root is not set: pass data.root=PATH (the dataset folder)")
    for split in splits:
        _check(split in data, f"data.{split} is missing (it needs ann_file and img_dir)")
        for key in ("ann_file", "img_dir"):
            name = f"data.{split}.{key}"
            if OmegaConf.is_missing(data[split], key):
                raise ConfigError(f"{name} is not set: pass {name}=PATH")
            path = Path(str(data[split][key]))
            exists = path.is_file() if key == "ann_file" else path.is_dir()
            _check(generated or exists, f"{name}: {path} does not exist")
        batch_size = data[split].get("batch_size", 1)
        _check(
            isinstance(batch_size, int) and batch_size >= 1,
            f"data.{split}.batch_size must be an integer >= 1, got {batch_size!r}",
        )
    for key, choices in (
        ("bad_box_policy", BAD_BOX_POLICIES),
        ("bad_image_policy", BAD_IMAGE_POLICIES),
    ):
        value = data.get(key, choices[-1])
        _check(value in choices, f"data.{key} must be one of {', '.join(choices)}, got {value!r}")


def validate_model(cfg: DictConfig) -> None:
    """The model tree must resolve (e.g. ``model.backbone.depth`` is a known ResNet depth)."""
    _check("_target_" in cfg.model, "model: expected a _target_ tree (e.g. model=r50)")
    depth = OmegaConf.select(cfg, "model.backbone.depth", default=None)
    _check(
        depth is None or depth in RESNET_OUT_CHANNELS,
        f"model.backbone.depth must be one of {sorted(RESNET_OUT_CHANNELS)}, got {depth}",
    )
    try:
        OmegaConf.to_container(cfg.model, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "model"
        raise ConfigError(f"{key}: {_one_line(str(e).splitlines()[0])}") from None
    head = OmegaConf.to_container(cfg.model.get("head", {}), resolve=True)
    if "_target_" in head:
        # Built with one class while num_classes waits for the dataset: the constructor checks
        # the other values before anything runs.
        if head.get("num_classes") == "???":
            head["num_classes"] = 1
        with constructor_errors("model.head"):
            instantiate(head)


def validate_config(cfg: DictConfig) -> tuple[TrainConfig, OptimConfig]:
    """Validate a composed training config; raise :class:`ConfigError` at the first problem."""
    for group in CONFIG_GROUPS:
        _check(group in cfg, f"{group}: missing from the config (defaults list of train.yaml)")
    train = validate_train(cfg)
    optim = validate_optim(cfg)
    validate_loss(cfg)
    validate_model(cfg)
    with constructor_errors("postprocess"):  # the post-processor checks its thresholds
        instantiate(cfg.postprocess)
    validate_data(cfg)
    return train, optim


def existing_path(cfg: DictConfig, key: str, kind: str = "file") -> Path:
    """The path at ``cfg[key]``, which must be set and exist (``kind``: ``"file"``, or
    ``"any"`` for a file or a folder); else the one-line :class:`ConfigError`."""
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) is None:
        raise ConfigError(f"{key} is not set: pass {key}=PATH")
    path = Path(str(cfg[key]))
    exists = path.is_file() if kind == "file" else path.exists()
    _check(exists, f"{key}: {path} does not exist")
    return path


def validate_evaluate(cfg: DictConfig) -> None:
    """``tools/evaluate.py``: an existing ``checkpoint``, a usable ``data`` group, and
    ``postprocess`` overrides the post-processor accepts."""
    existing_path(cfg, "checkpoint")
    validate_data(cfg, splits=("val",))
    _check(cfg.workers >= 0, f"workers must be >= 0, got {cfg.workers}")
    overrides = {k: v for k, v in cfg.postprocess.items() if v is not None}
    with constructor_errors("postprocess"):
        RetinaNetPostProcessor(BoxCoder(), **overrides)


def validate_infer(cfg: DictConfig) -> None:
    """``tools/infer.py``: an existing ``checkpoint`` and ``input``, an ``output`` folder, and a
    score threshold in [0, 1]."""
    existing_path(cfg, "checkpoint")
    existing_path(cfg, "input", kind="any")
    if OmegaConf.is_missing(cfg, "output"):
        raise ConfigError("output is not set: pass output=DIR")
    thresh = cfg.score_thresh
    _check(
        isinstance(thresh, (int, float)) and 0 <= thresh <= 1,
        f"score_thresh must be in [0, 1], got {thresh}",
    )


def exit_on_config_error(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call ``fn``; on :class:`ConfigError` print ``focaldet: config error: ...`` and exit 2."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as e:
        print(f"focaldet: config error: {e}", file=sys.stderr)
        sys.exit(2)


register_resolvers()
