"""Per-question seeds (llava_avc.algorithm.seeds) and the launcher environment (llava_avc.eval.distributed)."""

from __future__ import annotations

import hashlib

import pytest

from llava_avc.algorithm.seeds import derived_seed, question_seed
from llava_avc.errors import UserError
from llava_avc.eval.distributed import (LaunchContext, launch_context, mark_done, rank_device, shard_key,
                                        wait_for_shards)


def test_a_question_seed_is_the_hash_of_the_run_seed_and_the_id():
    digest = hashlib.sha256("question\x1f42\x1fq-7".encode()).digest()
    assert question_seed(42, "q-7") == int.from_bytes(digest[:8], "big") >> 1
    assert question_seed(42, "q-7") != question_seed(43, "q-7") != question_seed(42, "q-8")
    assert 0 <= question_seed(42, 7) < 2**63


def test_derived_seeds_differ_by_purpose():
    seed = question_seed(42, 1)
    assert len({derived_seed(seed, "sample"), derived_seed(seed, "noise:0"), derived_seed(seed, "noise:1")}) == 3


def test_question_seed_refuses_a_non_integer_run_seed():
    with pytest.raises(TypeError, match=r"`run_seed` \(='42'\) must be an int"):
        question_seed("42", 1)


@pytest.mark.parametrize("environ, expected", [
    ({}, LaunchContext()),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, LaunchContext(3, 8, 1, "torchrun / accelerate")),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2"}, LaunchContext(5, 6, 2, "slurm")),
    ({"RANK": "0", "WORLD_SIZE": "1"}, LaunchContext(0, 1, 0, None)),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, LaunchContext(1, 2, 1, "slurm")),  # no local id: the rank
])
def test_launch_context_reads_each_launchers_variables(environ, expected):
    assert launch_context(environ) == expected


@pytest.mark.parametrize("environ, message", [
    ({"RANK": "x", "WORLD_SIZE": "2"}, r"RANK \(='x'\) must be an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK \(=2\) must be in \[0, WORLD_SIZE\)"),
])
def test_a_broken_launcher_environment_is_one_clear_error(environ, message):
    with pytest.raises(ValueError, match=message):
        launch_context(environ)


def test_ranks_without_a_gpu_run_on_the_cpu_and_one_named_gpu_is_refused():
    context = LaunchContext(1, 2, 1, "torchrun / accelerate")
    import torch

    assert rank_device(context, None) == ("cuda:1" if torch.cuda.device_count() > 1 else
                                          "cuda:0" if torch.cuda.is_available() else "cpu")
    assert rank_device(context, "cpu") == "cpu"
    assert rank_device(LaunchContext(), "cuda:3") == "cuda:3"
    with pytest.raises(ValueError, match="would put every rank on one device"):
        rank_device(context, "cuda:3")


def test_rank_zero_waits_for_every_shard_of_this_run(tmp_path):
    shards = [tmp_path / f"answers.chunk{i}of2.jsonl" for i in range(2)]
    keys = [shard_key("abc", [1, 3]), shard_key("abc", [2, 4])]
    mark_done(shards[0], 2, keys[0])
    mark_done(shards[1], 2, shard_key("other-config", [2, 4]))
    with pytest.raises(UserError, match=r"1 shard\(s\) not finished after 0 s \(answers.chunk1of2.jsonl\)"):
        wait_for_shards(shards, keys, timeout_s=0, poll_s=0)
    mark_done(shards[1], 1, shard_key("abc", [2]))  # the same configuration, a smaller --limit: another shard
    with pytest.raises(UserError):
        wait_for_shards(shards, keys, timeout_s=0, poll_s=0)
    mark_done(shards[1], 2, keys[1])
    wait_for_shards(shards, keys, timeout_s=0, poll_s=0)
