"""Which process this is: the one answer to "are we distributed?" for the whole project.

It lives in ``data/`` because ``data/`` imports nothing else of focaldet, so the model
(``detector.criterion``), the data loaders and the engine can all ask it without an import going
the wrong way (tools → engine → model / data / losses); the sample stream is also the first thing
that is sharded by rank.
"""

from __future__ import annotations

import torch.distributed as dist


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of this process in the ``torch.distributed`` group; ``(0, 1)`` when
    no group is initialised (a plain single-process run)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
