"""A checkpoint cannot run code: every ``_target_`` tree it carries is checked before building."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import albumentations as A
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import detector.engine.config  # noqa: F401 - registers the fd.* resolvers of the model configs
from data.transforms import TRANSFORM_TARGETS, ResizeShortestEdge, build_transforms
from detector import BoxCoder, ResNetBackbone, RetinaNet, RetinaNetPostProcessor
from detector.build import build_from_checkpoint
from detector.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from detector.safe_config import (
    MODEL_TARGETS,
    POSTPROCESS_TARGETS,
    UnsafeConfigError,
    build_config,
    check_config,
)
from detector.torchvision_convert import torchvision_model_config, torchvision_postprocess_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

TINY = {
    "_target_": "detector.RetinaNet",
    "backbone": {"_target_": "detector.ResNetBackbone", "depth": 18, "weights": None},
    "fpn": {"_target_": "detector.fpn.FPN", "in_channels": [128, 256, 512], "out_channels": 16},
    "head": {"_target_": "detector.RetinaNetHead", "in_channels": 16, "num_anchors": 9,
             "num_classes": 2, "num_convs": 1},
    "anchor_generator": {"_target_": "detector.AnchorGenerator"},
}  # fmt: skip


def _checkpoint(model_config: Any, postprocess_config: Any = None) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model": {},
        "model_config": model_config,
        "postprocess_config": postprocess_config,
        "classes": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    return path


def _attacks(victim: Path) -> dict[str, tuple[Any, str]]:
    """name → (a model_config that would run code under hydra.utils.instantiate, the message)."""
    opener = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
    nested = copy.deepcopy(TINY)
    nested["backbone"]["norm"] = {"extra": [opener]}
    hidden_list = copy.deepcopy(TINY)
    hidden_list["fpn"]["in_channels"] = [128, opener, 512]
    partial = {**copy.deepcopy(TINY), "_partial_": True}
    return {
        "open": (opener, r"model_config\._target_: 'builtins\.open' is not an allowed target"),
        "os.system": (
            {"_target_": "os.system", "command": f"rm {victim}"},
            r"model_config\._target_: 'os\.system' is not an allowed target",
        ),
        "subprocess.Popen": (
            {"_target_": "subprocess.Popen", "args": ["rm", str(victim)]},
            r"model_config\._target_: 'subprocess\.Popen'",
        ),
        "nested": (nested, r"model_config\.backbone\.norm\.extra\[0\]\._target_: 'builtins\.open'"),
        "list": (hidden_list, r"model_config\.fpn\.in_channels\[1\]\._target_: 'builtins\.open'"),
        "_partial_": (partial, r"model_config\._partial_: Hydra's _partial_ is not accepted"),
        "_args_ on an allowed class": (
            {"_target_": "detector.AnchorGenerator", "_args_": [[16, 32, 64, 128, 256]]},
            r"model_config\._args_: Hydra's _args_",
        ),
        "_recursive_": ({**TINY, "_recursive_": False}, r"model_config\._recursive_"),
        "_convert_": ({**TINY, "_convert_": "none"}, r"model_config\._convert_"),
        # Under OmegaConf this resolves to builtins.open; here it is refused unresolved.
        "interpolation to a target": (
            {"_target_": "${oc.decode:'builtins.open'}", "file": str(victim), "mode": "w"},
            r"model_config\._target_: \"\$\{oc\.decode:'builtins\.open'\}\" is not an allowed",
        ),
        "interpolation in a value": (
            {**TINY, "evil": {"_target_": "${target}"}, "target": "builtins.open"},
            r"model_config\.evil\._target_",
        ),
        "interpolation of a plain value": (
            {**TINY, "size_divisibility": "${oc.env:HOME}"},
            r"model_config\.size_divisibility: '\$\{oc\.env:HOME\}' is an interpolation",
        ),
        "dunder walk": (
            {"_target_": "albumentations.__builtins__.open"},
            r"model_config\._target_: 'albumentations\.__builtins__\.open' is not",
        ),
        "not a string": (
            {"_target_": ["builtins", "open"]},
            r"model_config\._target_: \['builtins', 'open'\] is not",
        ),
        "a model part from another list": (
            {**TINY, "anchor_generator": {"_target_": "albumentations.HorizontalFlip"}},
            r"model_config\.anchor_generator\._target_: 'albumentations\.HorizontalFlip'",
        ),
    }


@pytest.mark.parametrize(
    "attack",
    [
        "open", "os.system", "subprocess.Popen", "nested", "list", "_partial_",
        "_args_ on an allowed class", "_recursive_", "_convert_", "interpolation to a target",
        "interpolation in a value", "interpolation of a plain value", "dunder walk",
        "not a string", "a model part from another list",
    ],
)  # fmt: skip
def test_model_config_attacks_are_refused_before_anything_runs(attack: str, victim: Path) -> None:
    model_config, message = _attacks(victim)[attack]
    with pytest.raises(CheckpointError, match=f"^checkpoint {message}") as info:
        build_from_checkpoint(_checkpoint(model_config))
    assert "\n" not in str(info.value)
    assert victim.read_text() == "keep me"


def test_hydra_would_have_emptied_the_file(victim: Path, tmp_path: Path) -> None:
    """The attack is real: the old path (hydra.utils.instantiate) truncates the file."""
    import hydra.utils

    hydra.utils.instantiate(_attacks(victim)["open"][0]).close()
    assert victim.read_text() == ""


def test_postprocess_config_and_overrides_are_checked(victim: Path) -> None:
    post = {"_target_": "detector.RetinaNetPostProcessor", "box_coder": {"_target_": "os.system"}}
    with pytest.raises(CheckpointError, match=r"postprocess_config\.box_coder\._target_"):
        build_from_checkpoint(_checkpoint(TINY, post))
    model_part = {"_target_": "detector.RetinaNet"}
    with pytest.raises(CheckpointError, match=r"postprocess_config\._target_: 'detector\.Retina"):
        build_from_checkpoint(_checkpoint(TINY, model_part))
    good = {
        "_target_": "detector.RetinaNetPostProcessor",
        "box_coder": {"_target_": "detector.BoxCoder"},
    }
    with pytest.raises(CheckpointError, match=r"postprocess_config\.score_thresh: '\$\{"):
        build_from_checkpoint(_checkpoint(TINY, good), {"score_thresh": "${oc.env:HOME}"})


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"_target_": "builtins.open", "file": "x"}, r"transforms\[1\]\._target_: 'builtins"),
        ({"_target_": "albumentations.Lambda"}, r"'albumentations\.Lambda' is not an allowed"),
        ({"_target_": "albumentations.os.system"}, r"'albumentations\.os\.system'"),
        ({"_target_": "albumentations.core.composition.np.random.Generator"}, r"np\.random"),
        (
            {"_target_": "albumentations.OneOf", "transforms": [{"_target_": "os.system"}]},
            r"transforms\[1\]\.transforms\[0\]\._target_: 'os\.system'",
        ),
        ({"_target_": "albumentations.HorizontalFlip", "_partial_": True}, r"_partial_"),
    ],
)
def test_transform_attacks_are_refused(node: dict, message: str) -> None:
    resize = {"_target_": "data.transforms.ResizeShortestEdge", "short_sizes": [32]}
    with pytest.raises(UnsafeConfigError, match=message):
        build_transforms([resize, node], train=False)


def test_albumentations_transforms_and_composes_are_allowed() -> None:
    assert TRANSFORM_TARGETS.resolve("albumentations.HorizontalFlip") is A.HorizontalFlip
    assert TRANSFORM_TARGETS.resolve("albumentations.augmentations.HorizontalFlip") is (
        A.HorizontalFlip
    )
    assert TRANSFORM_TARGETS.resolve("data.transforms.ResizeShortestEdge") is ResizeShortestEdge
    assert TRANSFORM_TARGETS.resolve("albumentations.Compose") is A.Compose
    assert TRANSFORM_TARGETS.resolve("albumentations.NoSuchThing") is None
    nodes = [
        {"_target_": "albumentations.OneOf", "p": 1.0,
         "transforms": [{"_target_": "albumentations.HorizontalFlip", "p": 1.0}]},
    ]  # fmt: skip
    compose = build_transforms(nodes, train=False)
    (one_of,) = compose.transforms
    assert isinstance(one_of, A.OneOf) and isinstance(one_of.transforms[0], A.HorizontalFlip)


def test_build_config_builds_nested_nodes_and_plain_values() -> None:
    coder = {"_target_": "detector.box_coder.BoxCoder", "weights": [1, 2, 3, 4]}
    tree = {"_target_": "detector.RetinaNetPostProcessor", "score_thresh": 0.2, "box_coder": coder}
    post = build_config(tree, POSTPROCESS_TARGETS, "postprocess_config")
    assert isinstance(post, RetinaNetPostProcessor) and post.score_thresh == 0.2
    assert isinstance(post.box_coder, BoxCoder) and post.box_coder.weights == (1, 2, 3, 4)


def test_model_names_both_spellings_and_nothing_else() -> None:
    assert MODEL_TARGETS.resolve("detector.RetinaNet") is RetinaNet
    assert MODEL_TARGETS.resolve("detector.retinanet.RetinaNet") is RetinaNet
    assert MODEL_TARGETS.resolve("detector.RetinaNetPostProcessor") is None
    assert MODEL_TARGETS.resolve("detector.build.build_from_checkpoint") is None
    with pytest.raises(UnsafeConfigError, match=r"m\.x: a Tensor is not a config value"):
        check_config({"x": torch.zeros(1)}, MODEL_TARGETS, "m")
    with pytest.raises(UnsafeConfigError, match=r"m: key 3 is not a string"):
        check_config({3: 1}, MODEL_TARGETS, "m")


def _demo_config(model: str) -> dict[str, Any]:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    OmegaConf.update(cfg, "model.head.num_classes", 2, merge=False)
    return OmegaConf.to_container(cfg, resolve=True)


def test_a_demo_checkpoint_still_loads(tmp_path: Path) -> None:
    """What training writes (train.yaml, model=small) loads, with its evaluation transforms."""
    config = _demo_config("small")
    import hydra.utils

    torch.manual_seed(0)
    reference = hydra.utils.instantiate(config["model"], _convert_="all").eval()
    ckpt = {**_checkpoint(config["model"], config["postprocess"]), "config": config}
    ckpt["model"] = reference.state_dict()
    save_checkpoint(tmp_path / "demo.pt", ckpt)
    loaded = load_checkpoint(tmp_path / "demo.pt")
    model, post, classes = build_from_checkpoint(loaded)
    images = [torch.rand(3, 64, 80)]
    with torch.no_grad():
        assert torch.equal(model(images).cls_logits, reference(images).cls_logits)
    assert post.score_thresh == 0.05 and post.nms_thresh == 0.5 and len(classes) == 2
    transforms = build_transforms(loaded["config"]["data"]["val"]["transforms"], train=False)
    assert [type(t) for t in transforms.transforms] == [ResizeShortestEdge]


def test_pretrained_weights_named_by_a_checkpoint_are_not_followed(monkeypatch) -> None:
    """r50 trains from ImageNet weights; its checkpoint must not download or read them again."""
    model_config = _demo_config("r50")["model"]
    assert model_config["backbone"]["weights"] == "imagenet"

    def refuse(self: ResNetBackbone, weights: str) -> None:
        raise AssertionError(f"loaded {weights}")

    monkeypatch.setattr(ResNetBackbone, "load_pretrained", refuse)
    model = build_config(
        model_config, MODEL_TARGETS, "model_config", cleared={ResNetBackbone: ("weights",)}
    )
    assert isinstance(model, RetinaNet) and model.num_classes == 2


def test_torchvision_converted_configs_pass() -> None:
    check_config(torchvision_model_config(), MODEL_TARGETS, "model_config")
    post = build_config(torchvision_postprocess_config(), POSTPROCESS_TARGETS, "postprocess_config")
    assert isinstance(post, RetinaNetPostProcessor)


@pytest.mark.parametrize("tree", [{"depth": 18}, [TINY], "detector.RetinaNet", None])
def test_a_config_without_a_root_target_is_refused(tree: Any) -> None:
    with pytest.raises(CheckpointError, match=r"^checkpoint model_config: expected a mapping with"):
        build_from_checkpoint(_checkpoint(tree))
