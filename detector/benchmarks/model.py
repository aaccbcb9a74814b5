"""Model benchmark (``what=model``): focaldet's RetinaNet side by side with torchvision's,
training-step time, inference time and peak memory, in one process, alternating the two after a
warm-up.

The two models compute the same function. torchvision's is built as ``retinanet_resnet50_fpn``
builds it but for ``depth``, ``num_classes`` and ``size``: ``resnet{depth}`` with
FrozenBatchNorm2d, three trainable stages, ``_resnet_fpn_extractor(returned_layers=[2, 3, 4],
extra_blocks=LastLevelP6P7(256, 256))`` (P6 from P5) and ``RetinaNet(min_size=size,
max_size=size)``. focaldet's is ``ResNetBackbone(depth, frozen_stages=1, norm="frozen_bn")``,
``FPN(p6_from="p5")``, a four-conv ``RetinaNetHead``, torchvision's anchor sizes, the focal loss
(α = 0.25, γ = 2) and an L1 box loss (``SmoothL1BoxLoss(beta=0)``) as torchvision's, and the
paper's post-processing (score 0.05, 1000 candidates per level, NMS 0.5, 100 detections), as
torchvision's (told ``detections_per_img=100``; it defaults to 300). torchvision's weights (its
own initialisation) are copied into focaldet's (``focaldet_state_dict``), and the classification
weights are redrawn with a larger spread (``CLS_WEIGHT_STD``) so that, as with a trained detector,
many scores pass the 0.05 threshold and both post-processors do real top-k and NMS work; the
detection counts and the largest score difference are recorded as a check.

Both models get the same list of ``batch`` random ``size`` × ``size`` images (and, to train, the
same ``BOXES_PER_IMAGE`` random boxes per image). A training step is forward, loss, backward and
an SGD step (momentum 0.9, weight decay 1e-4 as configs/optim/sgd.yaml; lr 0, see ``LR``);
inference is forward and post-processing under ``torch.inference_mode``. Each is warmed up
``warmup`` times, then run ``iters`` times, the two implementations alternating (the first of
each pair alternating too); medians are reported. On CPU the process CPU time (all threads) is
recorded beside the wall time: it is less disturbed by other processes sharing the machine.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over a step after a reset (weights,
gradients and optimizer state included). On CPU PyTorch keeps no allocator statistics and a
process's resident set never shrinks, so each (implementation, mode) runs in a fresh process
that imports the same libraries and builds both models (to copy the weights), drops the other
one, resets the kernel's high-water mark (``/proc/self/clear_refs``), runs ``warmup + 1`` steps
and reports the peak resident set (``VmHWM``; ``getrusage().ru_maxrss`` where the reset is not
permitted): everything the process held, libraries and the model's weights included.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from detector import (
    FPN,
    AnchorGenerator,
    AnchorLabeler,
    BoxCoder,
    Matcher,
    ResNetBackbone,
    RetinaNet,
    RetinaNetCriterion,
    RetinaNetHead,
    RetinaNetPostProcessor,
)
from detector.anchors import torchvision_anchor_sizes
from detector.backbone import RESNET_OUT_CHANNELS
from detector.benchmarks.common import (
    KIB,
    MIB,
    check_device,
    cuda_peak_bytes,
    in_fresh_process,
    machine,
    markdown_table,
    resident_set_kib,
    time_steps,
)
from detector.engine.compile import compile_network
from detector.torchvision_convert import focaldet_state_dict
from losses import FocalLoss, SmoothL1BoxLoss

IMPLS = ("focaldet", "torchvision")
MODES = ("infer", "train")
"""Inference first, while both models still hold the same weights."""
FPN_CHANNELS = 256
TRAINABLE_LAYERS = 3
"""res3–res5 train, the stem and res2 are frozen: torchvision's default and the paper's."""
BOXES_PER_IMAGE = 8
CLS_WEIGHT_STD = 0.05
"""Spread of the redrawn classification weights (the paper's initialisation is 0.01)."""
LR, MOMENTUM, WEIGHT_DECAY = 0.0, 0.9, 1e-4
"""lr = 0: every step computes the same function of the same weights. Random weights with
identity frozen statistics diverge to NaN within a step or two at any useful rate, and steps on
NaNs time something else. SGD still does all its work (weight decay, momentum, update)."""
SEED = 0
DETECTIONS_PER_IMG = 100
"""The paper's and focaldet's; torchvision's RetinaNet defaults to 300."""


def build_torchvision(
    depth: int, size: int, num_classes: int, max_size: int | None = None
) -> TorchvisionRetinaNet:
    """torchvision's RetinaNet with a ResNet-``depth`` FrozenBatchNorm backbone, P6 from P5; its
    transform leaves ``size`` × ``max_size`` images (``max_size`` None: ``size``) as they are."""
    resnet = getattr(torchvision.models, f"resnet{depth}")(norm_layer=FrozenBatchNorm2d)
    p6p7 = LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS)
    backbone = _resnet_fpn_extractor(resnet, TRAINABLE_LAYERS, [2, 3, 4], extra_blocks=p6p7)
    tv = TorchvisionRetinaNet(backbone, num_classes, size, max_size or size)
    tv.detections_per_img = DETECTIONS_PER_IMG
    return tv


def build_focaldet(
    depth: int, num_classes: int
) -> tuple[RetinaNet, RetinaNetCriterion, RetinaNetPostProcessor]:
    """focaldet's model, criterion and post-processor with the same architecture as
    ``build_torchvision`` (default channels_last memory format)."""
    backbone = ResNetBackbone(depth, frozen_stages=1, norm="frozen_bn")
    fpn = FPN(backbone.out_channels, FPN_CHANNELS, p6_from="p5")
    head = RetinaNetHead(FPN_CHANNELS, num_anchors=9, num_classes=num_classes)
    model = RetinaNet(backbone, fpn, head, AnchorGenerator(torchvision_anchor_sizes()))
    criterion = RetinaNetCriterion(
        BoxCoder(), AnchorLabeler(Matcher()), FocalLoss(0.25, 2.0), SmoothL1BoxLoss(0.0)
    )
    return model, criterion, RetinaNetPostProcessor(BoxCoder())


def build_pair(
    depth: int, size: int, num_classes: int, max_size: int | None = None
) -> tuple[TorchvisionRetinaNet, RetinaNet, RetinaNetCriterion, RetinaNetPostProcessor]:
    """Both models with the same weights, the classification weights redrawn (see the module
    docstring); ``max_size`` as in :func:`build_torchvision`."""
    torch.manual_seed(SEED)
    tv = build_torchvision(depth, size, num_classes, max_size)
    with torch.no_grad():
        tv.head.classification_head.cls_logits.weight.normal_(0.0, CLS_WEIGHT_STD)
    ours, criterion, post = build_focaldet(depth, num_classes)
    ours.load_state_dict(focaldet_state_dict(tv.state_dict()), strict=True)
    return tv, ours, criterion, post


def make_inputs(
    batch: int, size: int, num_classes: int, device: torch.device, width: int | None = None
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``batch`` random (3, size, width) images in [0, 1] (``width`` None: square) and targets
    of random boxes."""
    g = torch.Generator().manual_seed(SEED)
    width = width or size
    images = [torch.rand(3, size, width, generator=g).to(device) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        wh = torch.rand(BOXES_PER_IMAGE, 2, generator=g) * (size / 3) + 16
        xy = torch.rand(BOXES_PER_IMAGE, 2, generator=g) * (torch.tensor([width, size]) - wh)
        labels = torch.randint(num_classes, (BOXES_PER_IMAGE,), generator=g)
        targets.append(
            {"boxes": torch.cat([xy, xy + wh], 1).to(device), "labels": labels.to(device)}
        )
    return images, targets


def make_step(
    impl: str,
    mode: str,
    models: dict[str, nn.Module],
    images: list[Tensor],
    targets: list[dict[str, Tensor]],
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Callable[[], object]:
    """A closure running one training step or one inference of ``impl``.

    ``models`` holds ``"model"`` and, for focaldet, ``"criterion"`` and ``"post"``; ``amp_dtype``
    is the autocast dtype (None: float32); ``scaler`` scales the loss (fp16). Inference returns
    the detections (one dict per image), a training step the detached total loss.
    """
    model = models["model"]
    device = images[0].device

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    if mode == "infer":
        model.eval()

        def infer() -> object:
            with torch.inference_mode(), autocast():
                if impl == "torchvision":
                    return model(images)
                return models["post"](model(images))

        return infer
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)

    def train() -> Tensor:
        with autocast():
            if impl == "torchvision":
                losses = model(images, targets)
            else:
                losses = models["criterion"](model(images), targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return train


def compare_detections(ours: list[dict], theirs: list[dict]) -> dict:
    """Detection counts per image and the largest score difference (over the common prefix of
    the score-sorted lists): the check that both models compute the same thing."""
    diff = 0.0
    for a, b in zip(ours, theirs, strict=True):
        n = min(len(a["scores"]), len(b["scores"]))
        if n:
            diff = max(diff, (a["scores"][:n].float() - b["scores"][:n].float()).abs().max().item())
    return {
        "focaldet_detections": [len(d["scores"]) for d in ours],
        "torchvision_detections": [len(d["scores"]) for d in theirs],
        "max_score_diff": diff,
    }


def _models(impl: str, tv: nn.Module, ours: nn.Module, criterion: nn.Module, post: nn.Module):
    if impl == "torchvision":
        return {"model": tv}
    return {"model": ours, "criterion": criterion, "post": post}


def _cpu_peak_worker(impl: str, mode: str, config: dict, queue) -> None:
    """In a fresh process: the peak resident set (bytes) over ``warmup + 1`` steps."""
    torch.set_num_threads(config["threads"])
    device = torch.device("cpu")
    tv, ours, criterion, post = build_pair(config["depth"], config["size"], config["num_classes"])
    models = _models(impl, tv, ours, criterion, post)
    del tv, ours, criterion, post
    gc.collect()
    if config["compile"]:
        compile_network(models["model"])
    images, targets = make_inputs(config["batch"], config["size"], config["num_classes"], device)
    amp_dtype = torch.bfloat16 if config["amp"] else None
    step = make_step(impl, mode, models, images, targets, amp_dtype)

    def steps() -> None:
        for _ in range(config["warmup"] + 1):
            step()

    # The high-water mark is reset before the steps, so it forgets the other model's weights
    # (built to copy them): only the measured model is held now.
    _, peak_kib = resident_set_kib(steps)
    queue.put(peak_kib * KIB)


def peak_memory(
    impl: str, mode: str, step: Callable[[], object], device: torch.device, config: dict
) -> int:
    """Peak memory in bytes of ``impl``'s ``mode`` step (see the module docstring)."""
    if device.type == "cuda":
        return cuda_peak_bytes(step, device)[1]
    return in_fresh_process(_cpu_peak_worker, impl, mode, config)


def _measure(
    mode: str,
    steps: dict[str, Callable[[], object]],
    dev: torch.device,
    memory: bool,
    config: dict,
) -> dict[str, Any]:
    """Times (and peak memory) of both implementations' ``mode`` steps, and their ratios."""
    first = {}
    if config["compile"]:  # the first call compiles (the backward graphs in training too)
        for impl in IMPLS:
            first[impl] = time_steps({impl: steps[impl]}, dev, 1, 0)[impl]["wall"][0]
    times = time_steps(steps, dev, config["iters"], config["warmup"], swap_order=True)
    results: dict[str, Any] = {}
    for impl in IMPLS:
        record = {
            "median_s": statistics.median(times[impl]["wall"]),
            "times_s": times[impl]["wall"],
        }
        if impl in first:
            record["first_call_s"] = first[impl]
        if dev.type == "cpu":
            record["cpu_median_s"] = statistics.median(times[impl]["cpu"])
            record["cpu_times_s"] = times[impl]["cpu"]
        if memory:
            record["peak_mib"] = peak_memory(impl, mode, steps[impl], dev, config) / MIB
        results[impl] = record
    ours_r, tv_r = results["focaldet"], results["torchvision"]
    ratio = {"time": ours_r["median_s"] / tv_r["median_s"]}
    if dev.type == "cpu":
        ratio["cpu_time"] = ours_r["cpu_median_s"] / tv_r["cpu_median_s"]
    if memory:
        ratio["peak_memory"] = ours_r["peak_mib"] / tv_r["peak_mib"]
    results["ratio"] = ratio
    return results


def _check_args(depth: int, size: int, counts: dict[str, int], warmup: int) -> None:
    if depth not in RESNET_OUT_CHANNELS:
        raise ValueError(f"depth must be 18, 34, 50 or 101, got {depth}")
    if size % 128 or size <= 0:
        raise ValueError(f"size must be a positive multiple of 128 (the P7 stride), got {size}")
    if min(counts.values()) < 1 or warmup < 0:
        raise ValueError(
            f"{', '.join(list(counts)[:-1])} and {list(counts)[-1]} must be >= 1 and warmup >= 0,"
            f" got {', '.join(str(v) for v in counts.values())}, {warmup}"
        )


def run(
    depth: int = 50,
    size: int = 512,
    batch: int = 2,
    num_classes: int = 80,
    threads: int = 2,
    device: str = "cpu",
    amp: bool = False,
    compile: bool = False,
    iters: int = 10,
    warmup: int = 2,
    memory: bool = True,
) -> dict[str, Any]:
    """Benchmark both RetinaNets; a JSON-able dict ``{"meta", "config", "check", "results"}``.

    ``results[mode][impl]`` holds ``median_s``, ``times_s``, ``cpu_median_s``, ``cpu_times_s``
    (CPU device only) and ``peak_mib`` (when ``memory``); ``results[mode]["ratio"]`` is
    focaldet / torchvision for the median time and the peak memory. ``amp`` runs both under
    bfloat16 autocast; ``compile`` compiles both networks as ``train.compile=true`` does
    (:func:`detector.engine.compile.compile_network`: the modules with parameters, inductor), and
    records each implementation's first call (compiling included) as ``first_call_s``.
    """
    config = dict(locals())  # the arguments, as given: recorded with the figures
    counts = {"batch": batch, "num_classes": num_classes, "threads": threads, "iters": iters}
    _check_args(depth, size, counts, warmup)
    dev = check_device(device)
    torch.set_num_threads(threads)
    config.pop("memory")
    tv, ours, criterion, post = build_pair(depth, size, num_classes)
    tv.to(dev)
    ours.to(dev)
    criterion.to(dev)
    if compile:
        compile_network(tv)
        compile_network(ours)
    images, targets = make_inputs(batch, size, num_classes, dev)
    amp_dtype = torch.bfloat16 if amp else None
    results: dict[str, dict] = {}
    check: dict = {}
    for mode in MODES:
        steps = {
            impl: make_step(
                impl, mode, _models(impl, tv, ours, criterion, post), images, targets, amp_dtype
            )
            for impl in IMPLS
        }
        if mode == "infer":
            check = compare_detections(steps["focaldet"](), steps["torchvision"]())
        results[mode] = _measure(mode, steps, dev, memory, config)
        del steps
    return {"meta": machine(dev), "config": config, "check": check, "results": results}


def format_table(result: dict[str, Any]) -> str:
    """A markdown table, one row per (mode, implementation), the ratios on focaldet's rows."""
    cpu = result["config"]["device"] == "cpu"
    header = ["mode", "implementation", "median s"] + (["cpu s"] if cpu else [])
    header += ["peak MiB", "time ×tv"] + (["cpu ×tv"] if cpu else []) + ["mem ×tv"]
    rows = []
    for mode in MODES:
        ratio = result["results"][mode]["ratio"]
        for impl in IMPLS:
            r = result["results"][mode][impl]
            ours = impl == "focaldet"
            row = [mode, impl, f"{r['median_s']:.3f}"]
            row += [f"{r['cpu_median_s']:.3f}"] if cpu else []
            row += [f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"]
            row += [f"{ratio['time']:.3f}" if ours else ""]
            row += [f"{ratio['cpu_time']:.3f}" if ours else ""] if cpu else []
            row += [f"{ratio['peak_memory']:.3f}" if ours and "peak_memory" in ratio else ""]
            rows.append(row)
    return markdown_table(header, rows)
