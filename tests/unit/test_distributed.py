"""The pieces of multi-process training that need no process group: how global batches are dealt out, and
what a resume refuses."""
from __future__ import annotations

import numpy as np
import pytest

from textclf.data.tables import EpochBatches
from textclf.engine.distributed import ShardedBatches, ShardedList, merge_small
from textclf.errors import TextclfError


@pytest.mark.parametrize("n_rows, batch, world", [(63, 5, 2), (90, 8, 3), (7, 4, 4), (101, 16, 2)])
def test_every_rank_takes_the_same_steps_and_no_row_twice(n_rows, batch, world):
    lengths = np.random.default_rng(0).integers(1, 50, n_rows)
    inner = EpochBatches(np.arange(n_rows), lengths, batch * world, window=2, seed=3)
    shards = [ShardedBatches(inner, r, world) for r in range(world)]
    for epoch in (0, 1):
        for s in shards:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in shards]
        assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(shards[0])
        assert all(len(b) > 0 for p in per_rank for b in p)  # no rank ever gets an empty batch
        rows = [r for p in per_rank for b in p for r in b]
        assert sorted(rows) == list(range(n_rows))  # every row once per epoch
        for i in range(len(per_rank[0])):  # the weights make the ranks' mean losses the global batch's mean
            sizes = [len(p[i]) for p in per_rank]
            scales = [s.scales[i] for s in shards]
            # DDP averages scale_r * mean_r over the ranks: each row then weighs scale_r / (n_r * world) = 1 / n
            assert [sc / (n * world) for sc, n in zip(scales, sizes)] == pytest.approx([1 / sum(sizes)] * world)


def test_small_global_batches_join_a_neighbour():
    assert merge_small([[1, 2, 3], [4], [5, 6]], world=2) == [[1, 2, 3, 4], [5, 6]]
    assert merge_small([[1], [2, 3], [4, 5]], world=2) == [[1, 2, 3], [4, 5]]


def test_evaluation_batches_are_dealt_out_in_turn():
    batches = [[0, 1], [2], [3, 4], [5]]
    assert [list(ShardedList(batches, r, 3)) for r in range(3)] == [[[0, 1], [5]], [[2]], [[3, 4]]]
    assert ShardedList(batches, 0, 3).sizes == [2, 1, 2, 1]


def test_a_checkpoint_of_another_process_count_is_refused(tmp_path):
    import torch

    from textclf.engine.trainer import FitSettings, Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.ddp, trainer.settings = None, FitSettings(torch.device("cpu"), 1, "macro_f1", desc="fold 0")
    trainer.checkpoint = type("C", (), {"folder": tmp_path})()
    state = {"ranks": [{"rng": 1, "meter": {}}, {"rng": 2, "meter": {}}], "rng": 1, "meter": {}}
    with pytest.raises(TextclfError, match=r"written by a run of 2 process\(es\), this one has 1: resume with the "
                                           r"same number of processes, or delete that folder"):
        trainer._own_part(state)
    assert trainer._own_part({"ranks": None, "rng": 1, "meter": {}})["rng"] == 1
