"""Two gloo processes on CPU: identical parameters on both ranks, and the 1-process result."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig

from detector.engine.distributed import cleanup
from detector.engine.run import run_training

# Frozen BatchNorm: trainable BN would normalise each rank's half batch with its own statistics
# (SyncBatchNorm is CUDA-only), which a 1-process run cannot match.
DDP_OVERRIDES = (
    "train.max_iter=3",
    "model.backbone.norm=frozen_bn",
    "model.backbone.frozen_stages=0",
    "data.aspect_ratio_grouping=false",
    "data.train.transforms=[${data.val.transforms.0}]",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, cfg: DictConfig, run_dir: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    try:
        result = run_training(cfg, run_dir)
        torch.save(result.model.state_dict(), run_dir / f"rank{rank}.pt")
        if result.metrics is not None:
            torch.save(result.metrics, run_dir / "metrics_rank0.pt")
    finally:
        cleanup()


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(
    tiny_config: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spawned processes unpickle _worker as tests.engine.test_ddp._worker (pytest's
    # importlib mode): make the repository root importable for them.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    cfg = tiny_config(*DDP_OVERRIDES)
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), cfg, ddp_dir), nprocs=2, join=True)
    single = run_training(tiny_config(*DDP_OVERRIDES), tmp_path / "single")

    rank0 = torch.load(ddp_dir / "rank0.pt", weights_only=True)
    rank1 = torch.load(ddp_dir / "rank1.pt", weights_only=True)
    reference = single.model.state_dict()
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), f"{key} differs between ranks"
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-5, msg=key)
    # Only rank 0 wrote the run's files; its evaluation covered every validation image.
    assert sorted(p.name for p in (ddp_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    metrics = torch.load(ddp_dir / "metrics_rank0.pt", weights_only=True)
    assert single.metrics is not None
    assert metrics["AP"] == pytest.approx(single.metrics["AP"], abs=0.5)
    assert metrics["num_detections"] == pytest.approx(single.metrics["num_detections"], abs=2)
