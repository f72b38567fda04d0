"""A real one-process gloo group with megatron-core's parallel state (TP = CP = 1) per model test module."""

from __future__ import annotations

import os

import pytest
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_anchor.parallel import free_port


@pytest.fixture(scope="module", autouse=True)
def single_rank_groups():
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    ps.initialize_model_parallel(1, 1, context_parallel_size=1)
    yield
    ps.destroy_model_parallel()
    dist.destroy_process_group()
