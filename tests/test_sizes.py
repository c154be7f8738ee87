"""Dask weighs the engine's task results by the arrays they hold."""

from __future__ import annotations

import numpy as np
import pytest
from dask.sizeof import sizeof

from mfdask.engine.als import ReducedCG, Source
from mfdask.engine.blocks import RowBlock
from mfdask.engine.dsgd import Cell, UserShard
from mfdask.engine.sizes import sized


def _block(nnz: int, rows: int) -> RowBlock:
    return RowBlock(
        block=0,
        n_blocks=1,
        n_rows=rows,
        n_cols=10,
        indptr=np.zeros(rows + 1, np.int64),
        indices=np.zeros(nnz, np.int32),
        data=np.zeros(nnz, np.float32),
    )


def test_a_row_block_weighs_its_arrays() -> None:
    block = _block(nnz=250_000, rows=1_000)
    arrays = block.indptr.nbytes + block.indices.nbytes + block.data.nbytes
    assert arrays <= sizeof(block) < arrays + 4096


def test_nested_results_weigh_their_parts() -> None:
    block = _block(nnz=100_000, rows=500)
    cell = Cell(
        user_block=0,
        item_block=0,
        n_blocks=1,
        users=np.zeros(100_000, np.int32),
        items=np.zeros(100_000, np.int32),
        values=np.zeros(100_000, np.float32),
        n_local_users=500,
        n_local_items=10,
        n_users=500,
        n_items=10,
        member_bits=np.zeros(0, np.uint8),
    )
    shard = UserShard(block=block, cells=[cell])
    assert sizeof(shard) >= sizeof(block) + 3 * 400_000
    source = Source(factors=np.zeros((1000, 8), np.float32), gram=np.zeros((8, 8)))
    assert sizeof(source) >= 32_000 + 512
    x = np.zeros((1000, 8), np.float32)
    state = ReducedCG(
        x=x, r=x.copy(), p=x.copy(), rs=np.zeros(1000, np.float32), active=np.zeros(1000, bool)
    )
    assert sizeof(state) >= 3 * 32_000 + 5_000


def test_sized_takes_only_dataclasses() -> None:
    with pytest.raises(TypeError, match="dataclass"):
        sized(int)
