"""Convert a torchvision ``retinanet_resnet50_fpn`` state dict into a focaldet checkpoint.

Usage: ``python tools/convert_torchvision.py src=TV_STATE_DICT.pth out=CHECKPOINT.pt [bn_eps=0.0]``

``bn_eps`` is the epsilon of the frozen BatchNorm layers: 0.0 for torchvision's published
COCO_V1 weights (as ``retinanet_resnet50_fpn`` sets it), 1e-5 for a model built with
``nn.BatchNorm2d`` defaults. A reference-training checkpoint ``{"model": state_dict, ...}`` is
accepted too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from detector.checkpoint import save_checkpoint
from detector.torchvision_convert import COCO_V1_BN_EPS, convert_torchvision_state_dict

USAGE = (
    "usage: python tools/convert_torchvision.py src=TV_STATE_DICT.pth out=CHECKPOINT.pt "
    "[bn_eps=0.0]"
)
KEYS = ("src", "out", "bn_eps")


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments → dict; raises ``SystemExit`` with the usage on bad input."""
    args = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in KEYS:
            raise SystemExit(f"unknown argument {arg!r}\n{USAGE}")
        args[key] = value
    missing = [k for k in ("src", "out") if not args.get(k)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}\n{USAGE}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    src, out = Path(args["src"]), Path(args["out"])
    try:
        bn_eps = float(args.get("bn_eps", COCO_V1_BN_EPS))
    except ValueError:
        raise SystemExit(f"bn_eps must be a number, got {args['bn_eps']!r}") from None
    if not src.is_file():
        raise SystemExit(f"{src}: no such file")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        raise SystemExit(f"{src}: cannot be read as a PyTorch file: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        ckpt = convert_torchvision_state_dict(state, bn_eps=bn_eps)
    except ValueError as e:
        raise SystemExit(f"{src}: {e}") from e
    save_checkpoint(out, ckpt)
    print(f"wrote {out} ({len(ckpt['classes'])} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
