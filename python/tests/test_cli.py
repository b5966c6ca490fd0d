"""The command line driven from Python: dreamgym.run with a progress callback, rollouts split
into shards (by hand and as Ray tasks) that merge into the bytes of one process's rollout."""

import os
from pathlib import Path

import pytest

import dreamgym

needs_cli = pytest.mark.skipif(
    not os.environ.get("DREAMGYM_BIN"),
    reason="set DREAMGYM_BIN to the dreamgym binary",
)


def files(folder: Path) -> dict:
    """Every visible file of a folder, by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@needs_cli
def test_run_reports_every_stage_through_the_callback(tmp_path):
    (tmp_path / "tiny.toml").write_text(
        'name = "tiny"\n[rollout]\nenv = "CartPole-v0"\nepisodes = 25\nnum_envs = 4\n'
    )
    events = []
    run_dir = dreamgym.run("tiny.toml", callback=events.append, cwd=tmp_path)
    assert run_dir == tmp_path / "runs" / "tiny"
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run" and events[0]["name"] == "tiny"
    begin = next(e for e in events if e["event"] == "begin")
    assert (begin["stage"], begin["total"]) == ("collect", 25)
    advances = [e for e in events if e["event"] == "advance"]
    assert advances and advances[-1]["done"] == 25
    assert advances[-1]["status"].startswith("mean return")
    assert kinds.index("begin") < kinds.index("advance") < kinds.index("end")
    assert any(e["event"] == "done" and "wrote 25 episodes" in e["text"] for e in events)
    assert len(dreamgym.Dataset(run_dir / "data")) == 25
    # Again: the stage is already done, so nothing is collected.
    again = []
    dreamgym.run("tiny.toml", callback=again.append, cwd=tmp_path)
    assert not any(e["event"] == "advance" for e in again)


@needs_cli
def test_a_failing_run_raises_with_the_commands_message(tmp_path):
    (tmp_path / "bad.toml").write_text('name = "bad"\n[rollout]\nenv = "CartPole-v0"\nepisodez = 3\n')
    with pytest.raises(dreamgym.DreamgymError, match="episodez"):
        dreamgym.run("bad.toml", cwd=tmp_path)
    with pytest.raises(dreamgym.DreamgymError, match="not an executable"):
        dreamgym.run("bad.toml", cwd=tmp_path, binary=tmp_path / "bad.toml")


@needs_cli
def test_shards_merge_into_the_bytes_of_one_rollout_and_gaps_are_refused(tmp_path):
    whole = dreamgym.rollout("CartPole-v0", tmp_path / "whole", episodes=70, seed=9, num_envs=3)
    ranges = dreamgym.distributed.shard_ranges(70, 3)
    assert ranges == [(0, 24), (24, 23), (47, 23)]
    shards = [
        dreamgym.rollout("CartPole-v0", tmp_path / f"shard{first}", episodes=count, seed=9,
                         first_episode=first, num_envs=3, workers=2)
        for first, count in ranges
    ]
    merged = dreamgym.merge(reversed(shards), tmp_path / "merged")
    assert files(merged) == files(whole)
    seeds = [int(ep["seed"]) for ep in dreamgym.Dataset(merged)]
    assert seeds == list(range(9, 79))
    with pytest.raises(dreamgym.DreamgymError, match="gap"):
        dreamgym.merge([shards[0], shards[2]], tmp_path / "gap")
    assert not (tmp_path / "gap").exists()


@needs_cli
def test_ray_tasks_record_shards_that_merge_into_one_rollouts_bytes(tmp_path):
    # CI sets DREAMGYM_REQUIRE_RAY so that a missing Ray fails instead of skipping.
    if os.environ.get("DREAMGYM_REQUIRE_RAY"):
        import ray
    else:
        ray = pytest.importorskip("ray")
    pixels = {"obs": "pixels", "width": 16, "height": 16}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        out = dreamgym.distributed.rollout(
            "Racer-v0", tmp_path / "ray", episodes=6, shards=3, storage=tmp_path / "shards",
            seed=4, num_envs=2, env_config=pixels,
        )
    finally:
        ray.shutdown()
    one = dreamgym.rollout("Racer-v0", tmp_path / "one", episodes=6, seed=4, num_envs=2,
                           env_config=pixels)
    assert files(out) == files(one)
    assert len(dreamgym.Dataset(out)) == 6
    assert not any((tmp_path / "shards").iterdir()), "the shards are removed after the merge"
