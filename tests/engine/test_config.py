"""Config composition, the documented overrides, and one clear line per bad config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from detector.backbone import RESNET_OUT_CHANNELS
from detector.engine.config import (
    ConfigError,
    existing_path,
    loop_settings,
    validate_config,
    validate_evaluate,
    validate_infer,
)
from detector.engine.loop import LoopSettings
from detector.engine.preflight import preflight, quote_path_arguments

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
Compose = Callable[[list[str]], DictConfig]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_defaults_compose_the_cpu_demo(compose_train: Compose) -> None:
    cfg = compose_train([])
    assert cfg.model.backbone.depth == 18
    assert cfg.model.backbone.norm == "bn" and cfg.model.backbone.frozen_stages == 0
    assert list(cfg.model.fpn.in_channels) == [128, 256, 512]
    assert cfg.model.head.num_anchors == 9
    assert (cfg.loss.alpha, cfg.loss.gamma) == (0.25, 2.0)
    assert cfg.data.root == "datasets/synthetic"
    validate_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=r50"], [512, 1024, 2048]),
        (["model=r101"], [512, 1024, 2048]),
        (["model=r34"], [128, 256, 512]),
        (["model=r50", "model.backbone.depth=18"], [128, 256, 512]),
        (["model=small", "model.backbone.depth=101"], [512, 1024, 2048]),
    ],
)
def test_fpn_channels_follow_the_backbone_depth(
    compose_train: Compose, overrides: list[str], expected: list[int]
) -> None:
    assert list(compose_train(overrides).model.fpn.in_channels) == expected


def test_loss_overrides(compose_train: Compose) -> None:
    ce = compose_train(["loss=ce"])
    assert ce.loss._target_ == "losses.FocalLoss" and (ce.loss.alpha, ce.loss.gamma) == (0.75, 0)
    focal = compose_train(["loss=focal", "loss.gamma=1", "loss.alpha=0.5"])
    assert (focal.loss.alpha, focal.loss.gamma) == (0.5, 1)
    # The criterion's classification loss is the loss group itself.
    assert compose_train(["loss=ce", "loss.alpha=0.5"]).criterion.cls_loss.alpha == 0.5


def test_num_anchors_follow_the_anchor_generator(compose_train: Compose) -> None:
    cfg = compose_train(
        ["model.anchor_generator.scales=[1.0]", "model.anchor_generator.ratios=[1.0]"]
    )
    assert cfg.model.head.num_anchors == 1


def test_train_overrides_are_typed(compose_train: Compose) -> None:
    train, optim = validate_config(
        compose_train(
            ["train.max_iter=7", "train.batch_size=2", "train.amp=true", "train.device=cpu"]
        )
    )
    assert (train.max_iter, train.batch_size, train.amp, train.device) == (7, 2, True, "cpu")
    assert optim.steps == pytest.approx([2 / 3, 8 / 9])


def test_coco_layouts(compose_train: Compose, tmp_path: Path) -> None:
    for sub in ("annotations", "train2017", "val2017"):
        (tmp_path / sub).mkdir()
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"instances_{split}2017.json").write_text("{}")
    cfg = compose_train(["data=coco", f"data.root={tmp_path}"])
    validate_config(cfg)
    assert cfg.data.val.img_dir == f"{tmp_path}/val2017"
    files = [
        f"data.train.ann_file={tmp_path}/annotations/instances_train2017.json",
        f"data.train.img_dir={tmp_path}/train2017",
        f"data.val.ann_file={tmp_path}/annotations/instances_val2017.json",
        f"data.val.img_dir={tmp_path}/val2017",
    ]
    validate_config(compose_train(["data=coco_format", *files]))


def test_raccoon_layout(compose_train: Compose, tmp_path: Path) -> None:
    """data=raccoon reads the two files tools/convert_dataset.py writes with val_fraction."""
    (tmp_path / "photos").mkdir()
    overrides = ["data=raccoon", f"data.root={tmp_path}", f"data.img_dir={tmp_path}/photos"]
    with pytest.raises(ConfigError, match=f"data.train.ann_file: {tmp_path}/instances_train.json"):
        validate_config(compose_train(overrides))
    for split in ("train", "val"):
        (tmp_path / f"instances_{split}.json").write_text("{}")
    cfg = compose_train(overrides)
    validate_config(cfg)
    assert cfg.data.val.img_dir == cfg.data.train.img_dir == f"{tmp_path}/photos"


BAD = [
    # The loss's constructor checks gamma and alpha; the config layer names the key.
    (["loss.gamma=-1"], "loss.gamma must be >= 0, got -1"),
    (["loss.gamma=inf"], "loss.gamma must be finite, got inf"),
    (["loss=ce", "loss.alpha=1.5"], "loss.alpha must be in [0, 1] or None, got 1.5"),
    (["loss.alpha=-0.1"], "loss.alpha must be in [0, 1] or None, got -0.1"),
    (["loss=dice"], f"unknown loss 'dice' (choose from {', '.join(_options('loss'))})"),
    (["model=r200"], f"unknown model 'r200' (choose from {', '.join(_options('model'))})"),
    (["loss._target_=losses.NoSuchLoss"], "loss._target_: unknown loss class 'losses.NoSuchLoss'"),
    (["data=coco"], "data.root is not set: pass data.root=PATH (the dataset folder)"),
    (
        ["data=coco", "data.root=/nonexistent"],
        "data.train.ann_file: /nonexistent/annotations/instances_train2017.json does not exist",
    ),
    (["data=coco_format"], "data.train.ann_file is not set: pass data.train.ann_file=PATH"),
    (["model.backbone.depth=77"], "model.backbone.depth must be one of [18, 34, 50, 101], got 77"),
    (["train.max_iter=0"], "train.max_iter must be >= 1, got 0"),
    (["train.device=tpu"], "train.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (
        ["train.amp=true", "train.amp_dtype=fp16", "train.device=cpu"],
        "train.amp_dtype=fp16 needs CUDA (its GradScaler is CUDA-only); use bf16 on CPU",
    ),
    (["optim.lr=0"], "optim.lr must be > 0, got 0.0"),
    # The constructors check these; the config layer names the key.
    (["train.log_period=0"], "train.log_period must be >= 1, got 0"),
    (["train.clip_grad_norm=0"], "train.clip_grad_norm must be > 0 or null, got 0.0"),
    (["optim.momentum=1"], "optim.momentum must be in [0, 1), got 1.0"),
    (["optim.base_batch_size=0"], "optim.base_batch_size must be >= 1, got 0"),
    (["optim.gamma=2"], "optim.gamma must be in (0, 1], got 2.0"),
    (
        ["optim.steps=[0.9,0.5]"],
        "optim.steps must be increasing fractions of max_iter in (0, 1], got [0.9, 0.5]",
    ),
    (["model.head.prior_prob=1"], "model.head.prior_prob must be in (0, 1), got 1"),
    (["model.head.num_convs=-1"], "model.head.num_convs must be >= 0, got -1"),
    (["postprocess.nms_thresh=1.5"], "postprocess.nms_thresh must be in [0, 1], got 1.5"),
    (["postprocess.detections_per_img=0"], "postprocess.detections_per_img must be >= 1, got 0"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_gives_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        preflight(overrides, CONFIG_DIR, "train")
    assert str(info.value) == message


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        preflight(["train.batch_size=many"], CONFIG_DIR, "train")
    assert str(info.value).startswith("train.batch_size: Value 'many' of type 'str' could not")
    assert "\n" not in str(info.value)


def test_unknown_train_key() -> None:
    with pytest.raises(
        ConfigError, match=r"^train.max_iters: Key 'max_iters' not in 'TrainConfig'"
    ):
        preflight(["+train.max_iters=3"], CONFIG_DIR, "train")


def test_multirun_checks_every_point_before_the_first_job() -> None:
    preflight(["-m", "loss.gamma=0,1,2"], CONFIG_DIR, "train")
    with pytest.raises(ConfigError, match=r"^loss.gamma must be >= 0"):
        preflight(["-m", "loss.gamma=0,1,-2"], CONFIG_DIR, "train")


def test_hydra_overrides_are_left_to_hydra() -> None:
    preflight(["hydra.run.dir=/tmp/somewhere", "train.max_iter=3"], CONFIG_DIR, "train")


def test_evaluate_and_infer_configs(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    preflight([f"checkpoint={checkpoint}"], CONFIG_DIR, "evaluate", validate_evaluate)
    with pytest.raises(ConfigError, match=r"^checkpoint is not set: pass checkpoint=PATH$"):
        preflight([], CONFIG_DIR, "evaluate", validate_evaluate)
    for override, message in [
        ("postprocess.score_thresh=1.5", "postprocess.score_thresh must be in [0, 1], got 1.5"),
        ("postprocess.topk_candidates=0", "postprocess.topk_candidates must be >= 1, got 0"),
        ("postprocess.nms_thresh=abc", "postprocess.nms_thresh must be in [0, 1], got abc"),
        (
            "postprocess.detections_per_img=2.5",
            "postprocess.detections_per_img must be >= 1, got 2.5",
        ),
    ]:
        with pytest.raises(ConfigError) as info:
            preflight(
                [f"checkpoint={checkpoint}", override], CONFIG_DIR, "evaluate", validate_evaluate
            )
        assert str(info.value) == message
    args = [f"checkpoint={checkpoint}", f"input={tmp_path}", f"output={tmp_path}/out"]
    preflight(args, CONFIG_DIR, "infer", validate_infer)
    cases = [
        ("score_thresh=1.5", "score_thresh must be in [0, 1], got 1.5"),
        (f"input={tmp_path}/absent", f"input: {tmp_path}/absent does not exist"),
        (f"checkpoint={tmp_path}/absent.pt", f"checkpoint: {tmp_path}/absent.pt does not exist"),
    ]
    for override, message in cases:
        with pytest.raises(ConfigError) as info:
            preflight([*args, override], CONFIG_DIR, "infer", validate_infer)
        assert str(info.value) == message


@pytest.mark.parametrize(
    "path",
    [
        "runs/0_loss={gamma:2.0,alpha:0.25},train.seed=0/last.pt",
        "it's here",
        "a\\'b",
        "end\\",
        "x y",
    ],
)
def test_paths_are_quoted_for_hydra(path: str) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    argv = [f"checkpoint={path}", "data.root=x", f"out={path}"]
    quoted = quote_path_arguments(argv, ["checkpoint", "out"])
    assert quoted[1] == "data.root=x"
    parser = OverridesParser.create()
    assert [parser.parse_override(arg).value() for arg in quoted] == [path, "x", path]
    assert quote_path_arguments(["checkpoint=runs/a-1/last.pt"], ["checkpoint"]) == [
        "checkpoint=runs/a-1/last.pt"
    ]


def test_loop_settings_come_from_the_train_group(compose_train: Compose) -> None:
    train, _ = validate_config(compose_train([]))
    # configs/train/default.yaml: the CPU demo's periods and its gradient clipping.
    assert loop_settings(train) == LoopSettings(
        max_iter=400,
        log_period=20,
        eval_period=200,
        checkpoint_period=200,
        skip_nonfinite=0,
        clip_grad_norm=10.0,
        progress=True,
    )


def test_fpn_channels_are_the_backbone_table(compose_train: Compose) -> None:
    for depth, channels in RESNET_OUT_CHANNELS.items():
        cfg = compose_train([f"model.backbone.depth={depth}"])
        assert list(cfg.model.fpn.in_channels) == channels


def test_existing_path(tmp_path: Path) -> None:
    (tmp_path / "a.pt").write_bytes(b"")
    cfg = OmegaConf.create({"checkpoint": str(tmp_path / "a.pt"), "input": str(tmp_path)})
    assert existing_path(cfg, "checkpoint") == tmp_path / "a.pt"
    assert existing_path(cfg, "input", kind="any") == tmp_path
    with pytest.raises(ConfigError, match=rf"^input: {tmp_path} does not exist$"):
        existing_path(cfg, "input")
