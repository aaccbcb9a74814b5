"""Every experiment config composes, and every point of its sweep instantiates its criterion."""

import functools
import itertools
from pathlib import Path

import hydra.utils
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from detector import AnchorGenerator, RetinaNetCriterion
from detector.engine.config import register_resolvers, validate_loss, validate_model
from detector.paper.ohem import OHEMCriterion
from losses import FocalLoss, FocalLossStar

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# The paper-regime tables keep the names of the tables they repeat (tools/report.py reads them)
# and sweep one seed by default (`make paper SEEDS=2` adds the second).
NAMES = {"paper_table1a": "table1a", "paper_table1b": "table1b"}
ONE_SEED = {"paper_table1a", "paper_table1b", "paper_schedule", "imbalance_curve"}


@functools.cache
def sweep_configs(experiment: str) -> tuple[DictConfig, ...]:
    """The config of every job that ``tools/train.py -m +experiment=<experiment>`` runs, in the
    order Hydra's basic sweeper runs them (composed once per module: composition is slow)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        base = [f"+experiment={experiment}"]
        cfg = compose(config_name="train", overrides=base, return_hydra_config=True)
        params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
        parsed = OverridesParser.create().parse_overrides(params)
        jobs = itertools.chain.from_iterable(BasicSweeper.split_arguments(parsed, None))
        return tuple(compose(config_name="train", overrides=[*base, *job]) for job in jobs)


def test_every_experiment_is_tested() -> None:
    assert EXPERIMENTS == [
        "fl_star", "imbalance_curve", "no_prior", "paper_schedule", "paper_table1a",
        "paper_table1b", "table1a", "table1b", "table1c", "table1d",
    ]  # fmt: skip


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_sweep_point_composes_and_instantiates(experiment: str) -> None:
    seeds = set()
    for cfg in sweep_configs(experiment):
        assert cfg.experiment.name == NAMES.get(experiment, experiment)
        validate_loss(cfg)
        validate_model(cfg)
        criterion = hydra.utils.instantiate(cfg.criterion, _convert_="all")
        assert isinstance(criterion, RetinaNetCriterion)
        model = OmegaConf.to_container(cfg.model, resolve=True)
        generator = hydra.utils.instantiate(model["anchor_generator"])
        assert isinstance(generator, AnchorGenerator)
        assert model["head"]["num_anchors"] == generator.num_anchors_per_location
        # The saved config's `loss` is the loss the criterion trains with.
        assert OmegaConf.to_container(cfg.loss, resolve=True) == OmegaConf.to_container(
            cfg.criterion.cls_loss, resolve=True
        )
        seeds.add(cfg.train.seed)
    assert seeds == ({0} if experiment in ONE_SEED else {0, 1})


def settings(experiment: str, read) -> list:
    """``read(cfg)`` for seed 0 of every sweep point, in sweep order."""
    return [read(cfg) for cfg in sweep_configs(experiment) if cfg.train.seed == 0]


def test_table1a_is_ce_over_alpha() -> None:
    got = settings("table1a", lambda c: (c.loss.gamma, c.loss.alpha))
    assert got == [(0.0, a) for a in (0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 0.999)]


def test_table1b_runs_the_seven_pairs_not_their_product() -> None:
    got = settings("table1b", lambda c: (c.loss._target_, c.loss.gamma, c.loss.alpha))
    pairs = [(0, 0.75), (0.1, 0.75), (0.2, 0.75), (0.5, 0.5), (1, 0.25), (2, 0.25), (5, 0.25)]
    assert got == [("losses.FocalLoss", g, a) for g, a in pairs]


def test_table1c_anchor_grid() -> None:
    got = settings(
        "table1c",
        lambda c: (list(c.model.anchor_generator.scales), len(c.model.anchor_generator.ratios)),
    )
    shapes = [(1, 1), (2, 1), (3, 1), (1, 3), (2, 3), (3, 3), (4, 3)]
    assert [(len(s), r) for s, r in got] == shapes
    for scales, _ in got:  # octave scales 2^(k/n)
        n = len(scales)
        assert scales == pytest.approx([2 ** (k / n) for k in range(n)], abs=1e-15)


def test_table1d_rows() -> None:
    def row(cfg: DictConfig) -> tuple:
        criterion = hydra.utils.instantiate(cfg.criterion, _convert_="all")
        if isinstance(criterion, OHEMCriterion):
            assert isinstance(criterion.cls_loss, FocalLoss)
            assert (criterion.cls_loss.alpha, criterion.cls_loss.gamma) == (None, 0.0)
            return (criterion.batch_size_per_image, criterion.nms_thresh, criterion.fg_fraction)
        assert (criterion.cls_loss.alpha, criterion.cls_loss.gamma) == (0.25, 2.0)
        return ("FL",)

    got = settings("table1d", row)
    ohem = [(b, t, f) for f in (None, 0.25) for t in (0.7, 0.5) for b in (128, 256, 512)]
    assert got == [("FL",), *ohem]


def test_fl_star_and_no_prior() -> None:
    got = settings("fl_star", lambda c: hydra.utils.instantiate(c.loss))
    assert all(isinstance(loss, FocalLossStar) for loss in got)
    assert [(loss.gamma, loss.beta) for loss in got] == [(2.0, 1.0), (4.0, 0.0)]
    got = settings("no_prior", lambda c: (c.loss.gamma, c.model.head.prior_prob))
    assert got == [(0.0, 0.01), (0.0, 0.5), (2.0, 0.01), (2.0, 0.5)]


PAPER_REGIME = {"num_classes": 5, "absent_classes": 75, "image_size": 256, "max_objects": 3}


def dial(cfg: DictConfig) -> dict:
    keys = ("num_classes", "absent_classes", "image_size", "max_objects")
    return {k: cfg.data.generate[k] for k in keys}


def test_paper_tables_run_the_paper_rows_in_the_paper_regime() -> None:
    got = settings("paper_table1a", lambda c: (c.loss.gamma, c.loss.alpha))
    assert got == [(0.0, a) for a in (0.10, 0.25, 0.50, 0.75, 0.90, 0.99)]
    got = settings("paper_table1b", lambda c: (c.loss._target_, c.loss.gamma, c.loss.alpha))
    pairs = [(0.5, 0.5), (1, 0.25), (2, 0.25), (5, 0.25), (2, 0.5), (2, 0.75)]
    assert got == [("losses.FocalLoss", g, a) for g, a in pairs]
    for experiment in ("paper_table1a", "paper_table1b"):
        for cfg in sweep_configs(experiment):
            assert dial(cfg) == PAPER_REGIME
            assert cfg.data.root == "datasets/synthetic_k5_a75_s256_o3"


def test_paper_regime_at_twice_the_resolution() -> None:
    """``data=synthetic_paper_512``: the paper regime's dial with 512-px images, trained and
    evaluated at a short side of 384 (twice 192), in a dataset folder of its own."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=paper_table1a",
                                                      "data=synthetic_paper_512"])  # fmt: skip
    assert dial(cfg) == {**PAPER_REGIME, "image_size": 512}
    assert cfg.data.root == "datasets/synthetic_k5_a75_s512_o3"
    assert cfg.experiment.name == "table1a"
    for split in (cfg.data.train, cfg.data.val):
        resize = split.transforms[0]
        assert resize._target_ == "data.transforms.ResizeShortestEdge"
        assert (list(resize.short_sizes), resize.max_size) == ([384], 512)
    assert [t._target_ for t in cfg.data.train.transforms][1:] == ["albumentations.HorizontalFlip"]
    assert len(cfg.data.val.transforms) == 1
    assert cfg.data.val.batch_size == 8 and cfg.data.generate.num_train == 400


def test_schedule_trains_the_best_paper_rows_longer_and_evaluates_along_the_way() -> None:
    got = settings("paper_schedule", lambda c: (c.loss.gamma, c.loss.alpha))
    assert got == [(0.0, 0.75), (2.0, 0.75)]
    for cfg in sweep_configs("paper_schedule"):
        assert dial(cfg) == PAPER_REGIME
        assert (cfg.train.max_iter, cfg.train.eval_period) == (800, 200)


def test_imbalance_curve_crosses_losses_with_dial_settings() -> None:
    got = settings(
        "imbalance_curve",
        lambda c: (c.data.generate.absent_classes, c.data.generate.max_objects, c.loss.gamma,
                   c.loss.alpha, c.data.root),
    )  # fmt: skip
    dials = [(0, 8), (15, 8), (75, 8), (75, 3), (75, 1), (235, 1)]
    losses = [(0.0, 0.25), (0.0, 0.75), (2.0, 0.25)]
    assert got == [
        (a, o, g, al, f"datasets/synthetic_k5_a{a}_s256_o{o}") for a, o in dials for g, al in losses
    ]


def test_imbalance_curve_best_ce_alpha_is_a_parameter() -> None:
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        overrides = ["+experiment=imbalance_curve", "curve.best_ce_alpha=0.9"]
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    rows = [row.strip() for row in cfg.hydra.sweeper.params.loss.split("},")]
    assert rows == ["{gamma:0.0,alpha:0.25", "{gamma:0.0,alpha:0.9", "{gamma:2.0,alpha:0.25}"]
