"""Convert a torchvision ``retinanet_resnet50_fpn`` state dict into a focaldet checkpoint.

    python tools/convert_torchvision.py src=TV_STATE_DICT.pth out=CHECKPOINT.pt [bn_eps=0.0]

Keys (configs/convert_torchvision.yaml): ``src`` the torchvision state dict (a reference-training
checkpoint ``{"model": state_dict, ...}`` is accepted too), ``out`` the focaldet checkpoint,
``bn_eps`` the epsilon of the frozen BatchNorm layers: 0.0 for torchvision's published COCO_V1
weights (as ``retinanet_resnet50_fpn`` sets it), 1e-5 for a model built with ``nn.BatchNorm2d``
defaults.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING, DictConfig

from detector.checkpoint import save_checkpoint
from detector.engine.cli import run_tool, typed_config
from detector.engine.config import ConfigError
from detector.torchvision_convert import convert_torchvision_state_dict


@dataclass
class Args:
    """The types of configs/convert_torchvision.yaml (its values are the defaults)."""

    src: str = MISSING
    out: str = MISSING
    bn_eps: float = MISSING


def run(cfg: DictConfig) -> int:
    args = typed_config(Args, cfg, "convert_torchvision")
    src, out = Path(args.src), Path(args.out)
    if not src.is_file():
        raise ConfigError(f"src: {src}: no such file")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        raise SystemExit(f"{src}: cannot be read as a PyTorch file: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        ckpt = convert_torchvision_state_dict(state, bn_eps=args.bn_eps)
    except ValueError as e:
        raise SystemExit(f"{src}: {e}") from e
    save_checkpoint(out, ckpt)
    print(f"wrote {out} ({len(ckpt['classes'])} classes)")
    return 0


def main(argv: list[str]) -> int:
    """Exit status of the tool for the command-line arguments ``argv`` (2: a config error)."""
    return run_tool("convert_torchvision", run, argv, __doc__, ("src", "out"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
