"""train.compile=true: the compiled network trains to the same losses as the eager one, keeps its
state-dict keys, logs its compile time and does not recompile for every image size.

These tests compile with ``backend="aot_eager"`` (``train.compile_backend``): dynamo captures the
graphs and AOTAutograd traces forward and backward exactly as for inductor, but the traced graphs
run with eager kernels, because generating C++ for a ResNet under the load of this 2-core
machine takes minutes. ``tools/benchmark.py what=model model.compile=true`` and ``what=gpu``
exercise inductor itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from detector.engine.compile import compile_network, compiled_graphs
from detector.engine.config import ConfigError
from detector.engine.run import build_run, run_training


def test_compiled_training_has_the_eager_losses(
    tiny_config: Callable[..., DictConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    steps = ("train.max_iter=3", "optim.lr=0.02")
    eager = run_training(tiny_config(*steps), tmp_path / "eager")
    torch._dynamo.reset()
    caplog.set_level(logging.INFO, logger="detector.engine.compile")
    compiled = run_training(
        tiny_config(*steps, "train.compile=true", "train.compile_backend=aot_eager"),
        tmp_path / "compiled",
    )
    for key in ("loss/loss_cls", "loss/loss_box", "loss/total"):
        ours = [h[key] for h in compiled.history]
        assert ours == pytest.approx([h[key] for h in eager.history], rel=1e-4), key
    assert "graph(s) compiled in" in caplog.text
    # The checkpoint of a compiled run loads into an eager model: same keys, no _orig_mod.
    assert set(compiled.model.state_dict()) == set(eager.model.state_dict())


def test_new_image_sizes_recompile_at_most_once(
    tiny_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    model = build_run(tiny_config("train.max_iter=1"), tmp_path).model.eval()
    torch._dynamo.reset()
    log = compile_network(model, "eager")
    before = compiled_graphs()
    per_size = []
    with torch.no_grad():
        # From 256 px on: at 128 px P7 is 1×1, and dynamo specialises sizes of 1.
        for size in (256, 384, 512, 640):
            start = compiled_graphs()
            model(torch.rand(1, 3, size, 128))
            per_size.append(compiled_graphs() - start)
    # The first size compiles each compiled module, the second recompiles them with dynamic
    # height and width; later sizes reuse those graphs. The backend does not matter here:
    # whether to recompile is dynamo's decision.
    assert per_size[0] > 0 and per_size[2:] == [0, 0], per_size
    assert [e["graphs"] for e in log.events] == [n for n in per_size if n]
    assert compiled_graphs() - before == sum(per_size)
    assert all(e["seconds"] > 0 for e in log.events)


def test_unknown_backend_is_a_config_error(
    tiny_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = tiny_config("train.compile=true", "train.compile_backend=tvm")
    with pytest.raises(ConfigError, match=r"^train.compile_backend must be one of \('inductor'"):
        build_run(cfg, tmp_path)
    with pytest.raises(ValueError, match="compile_backend must be one of"):
        compile_network(torch.nn.Linear(2, 2), "tvm")
