"""Many processes, one benchmark run: torchrun, accelerate launch and Slurm's srun.

Under a launcher each process is one rank of `world_size`: it answers its shard (chunk `rank` of
`world_size`, LLaVA's `get_chunk`) into its own resumable answers file, on `cuda:LOCAL_RANK` (the
CPU where there is no GPU). Rank 0 then waits for every shard, merges them in question order and
scores. The shards meet through the run folder (a shared filesystem across nodes): a rank that
finishes writes a marker file naming the exact shard it completed (the configuration hash and a
fingerprint of the shard's question ids, so --limit is part of it); rank 0 waits until every
shard's marker names the shard of THIS run. A rank clears its own marker when it starts, and an
old marker of another run (a smaller --limit, another configuration) never counts. A rank that dies
leaves its answers and no marker; rerunning the same command answers only what is missing.

    torchrun --nproc-per-node 8 -m llava_avc eval pope ...          RANK, WORLD_SIZE, LOCAL_RANK
    accelerate launch --num_processes 8 -m llava_avc eval pope ...  the same variables
    srun -n 8 llava-avc eval pope ...                                SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from ..errors import UserError

#: (rank, world size, local rank) variables of each launcher, in the order they are looked for.
LAUNCHER_VARIABLES = (
    ("torchrun / accelerate", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)
DONE_SUFFIX = ".done.json"


@dataclass(frozen=True)
class LaunchContext:
    """Where this process stands among the processes of one run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: Optional[str] = None  # None: a single process

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _int(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name} (={value!r}) must be an integer; it is set by the launcher "
                        "(torchrun, accelerate launch or srun): do not set it by hand.") from None


def launch_context(environ: Mapping[str, str] = os.environ) -> LaunchContext:
    """The rank of this process from the launcher's environment (a single process when there is none).

    Raises:
        ValueError: a variable that is not an integer, or a rank outside [0, world size).
    """
    for launcher, rank_name, world_name, local_name in LAUNCHER_VARIABLES:
        if world_name in environ and rank_name in environ:
            world_size, rank = _int(environ, world_name), _int(environ, rank_name)
            local_rank = _int(environ, local_name) if local_name in environ else rank
            if world_size < 1 or not 0 <= rank < world_size:
                raise UserError(f"{rank_name} (={rank}) must be in [0, {world_name}) with {world_name} (={world_size}) "
                                 ">= 1; check the launcher's command line.")
            return LaunchContext(rank, world_size, local_rank, launcher if world_size > 1 else None)
    return LaunchContext()


def rank_device(context: LaunchContext, requested: Optional[str]) -> Optional[str]:
    """The device of this rank: `cuda:LOCAL_RANK` under a launcher with GPUs, else what was asked for.

    Raises:
        ValueError: `--device` names one GPU (cuda:N) under a launcher, which would put every rank on it.
    """
    if not context.is_distributed:
        return requested
    if requested not in (None, "cuda", "cpu"):
        raise UserError(f"--device {requested} under {context.launcher} (world size {context.world_size}) would put "
                        "every rank on one device; pass --device cuda (each rank takes cuda:LOCAL_RANK) or cpu.")
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return f"cuda:{context.local_rank % torch.cuda.device_count()}"
    return "cpu"


def done_marker(answers_file: Path) -> Path:
    """The file a rank writes when its shard is complete: `<answers file>.done.json`."""
    return answers_file.with_name(answers_file.name + DONE_SUFFIX)


def shard_key(config_hash: str, question_ids: list) -> str:
    """What identifies one shard of one run: the configuration and the exact question ids it answers."""
    import hashlib

    ids = hashlib.sha256(json.dumps([str(qid) for qid in question_ids]).encode()).hexdigest()[:16]
    return f"{config_hash}:{ids}"


def mark_done(answers_file: Path, count: int, key: str) -> None:
    """Record that this shard's answers file is complete for the shard `key` (`shard_key`; atomic write)."""
    marker = done_marker(answers_file)
    temporary = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"answers": count, "shard": key}) + "\n")
    os.replace(temporary, marker)


def clear_done(answers_file: Path) -> None:
    """Forget a previous completion (a shard about to be extended is not complete)."""
    done_marker(answers_file).unlink(missing_ok=True)


def wait_for_shards(answers_files: list, keys: list, timeout_s: float, poll_s: float = 1.0,
                    log: Callable[[str], None] = lambda message: None) -> None:
    """Rank 0: wait until every shard's marker exists and names that shard of this run (`keys`, one per file).

    Raises:
        TimeoutError: some shards are not done after `timeout_s` seconds (they are named; rerun the
            same command to finish them).
    """
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        missing = [path for path, key in zip(answers_files, keys) if not _done(path, key)]
        if not missing:
            return
        if time.monotonic() > deadline:
            names = ", ".join(Path(path).name for path in missing)
            raise UserError(f"{len(missing)} shard(s) not finished after {timeout_s:.0f} s ({names}); their answers "
                            "so far are saved: rerun the same command to finish and merge them.")
        if not announced:
            log(f"waiting for {len(missing)} other shard(s) to finish ...")
            announced = True
        time.sleep(poll_s)


def _done(answers_file: Path, key: str) -> bool:
    try:
        return json.loads(done_marker(Path(answers_file)).read_text()).get("shard") == key
    except (OSError, ValueError, AttributeError):
        return False
