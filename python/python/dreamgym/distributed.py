"""Rollouts across machines with Ray: each Ray task records one shard of a rollout into
shared storage, and the shards join into the dataset one process would have recorded.

::

    import ray, dreamgym.distributed
    ray.init()                      # or ray.init(address="auto") on a cluster
    dreamgym.distributed.rollout(
        "Racer-v0", "data/racer", episodes=10_000, shards=64,
        storage="/shared/dreamgym-shards", env_config={"obs": "pixels"},
        policy="runs/world-models-racer",
    )

Episode ``k`` of a rollout starts from ``reset(seed=seed + k)`` and its policy acts from the
same seed, whichever process records it, so the merged dataset is byte for byte the one
``dreamgym rollout`` records on one machine with the same arguments. ``storage`` must be a
folder every Ray node can write and the driver can read (a shared file system); on one
machine any folder does. Each node needs the ``dreamgym`` program (``dreamgym.cli.find_binary``),
and the policy's run folder where the node can read it: tasks run in the driver's current
folder when a node has it (a shared file system mounted at the same path), so relative paths
mean the same there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import cli
from ._dreamgym import DreamgymError

__all__ = ["rollout", "shard_ranges"]


def shard_ranges(episodes: int, shards: int) -> list[tuple[int, int]]:
    """Splits episodes ``0 .. episodes`` into ``shards`` contiguous ``(first, count)`` ranges
    whose sizes differ by at most one (empty ones left out)."""
    if episodes < 1 or shards < 1:
        raise ValueError("episodes and shards must be at least 1")
    base, extra = divmod(episodes, shards)
    out, first = [], 0
    for i in range(shards):
        count = base + (1 if i < extra else 0)
        if count:
            out.append((first, count))
            first += count
    return out


def rollout(
    env: str,
    out: str | os.PathLike,
    *,
    episodes: int,
    shards: int,
    storage: str | os.PathLike,
    policy: str = "random",
    seed: int = 0,
    num_envs: int = 8,
    workers: int = 1,
    env_config: Mapping[str, Any] | None = None,
    binary: str | os.PathLike | None = None,
    num_cpus: float = 1,
    keep_shards: bool = False,
) -> Path:
    """Records ``episodes`` episodes as ``shards`` Ray tasks (each ``num_cpus`` CPUs, its
    shard in ``storage/shard-<first>``), then merges them into the new dataset ``out`` on the
    driver. The shards are removed afterwards unless ``keep_shards``. Returns ``out``.

    Ray must be initialised (``ray.init``) or it starts a local cluster. ``binary`` is the
    ``dreamgym`` program's path on the nodes (default: ``$DREAMGYM_BIN`` or ``PATH`` there).
    """
    import ray

    storage = Path(storage).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    out = Path(out).resolve()
    driver_cwd = os.getcwd()
    env_config = dict(env_config or {})
    program = os.fspath(binary) if binary is not None else None

    @ray.remote(num_cpus=num_cpus)
    def record(first: int, count: int) -> str:
        path = storage / f"shard-{first:012d}"
        if path.exists():
            # A task that Ray retried after its node died: start the shard again.
            shutil.rmtree(path)
        cli.rollout(
            env, path, episodes=count, policy=policy, seed=seed, first_episode=first,
            num_envs=num_envs, workers=workers, env_config=env_config, binary=program,
            cwd=driver_cwd if os.path.isdir(driver_cwd) else None,
        )
        return os.fspath(path)

    ranges = shard_ranges(episodes, shards)
    try:
        paths = ray.get([record.remote(first, count) for first, count in ranges])
    except ray.exceptions.RayTaskError as e:
        raise DreamgymError(f"a shard of the rollout failed: {e}") from None
    merged = cli.merge(paths, out, binary=binary)
    if not keep_shards:
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)
    return merged
