#!/usr/bin/env python3
"""dreamgym's env throughput next to its peers, in one run on one machine.

Runs, back to back:
  - `dreamgym bench envs --json` (single env on one thread; 64 envs on 1 and 2 workers);
  - Gymnasium CartPole-v1, MuJoCo InvertedPendulum-v5 and Reacher-v5 in a plain Python loop;
  - EnvPool with 64 envs per batch on 1 and 2 threads (InvertedPendulum and Reacher);
  - 64x64 pixel observations: `dreamgym bench envs --set obs=pixels` against MuJoCo's
    offscreen renderer (OSMesa: `apt-get install libosmesa6`; MUJOCO_GL=osmesa is set here);
and prints steps/s and the ratios the foundation and pixels issues ask for. Set up with
`bench/setup_peers.sh` (a venv with gymnasium, mujoco, envpool). Not part of the build or tests.

Usage: bench-venv/bin/python bench/envs_vs_peers.py [--dreamgym target/release/dreamgym]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def python_loop(env_id, steps, **kwargs):
    import gymnasium as gym

    env = gym.make(env_id, **kwargs)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(4096)]
    env.reset(seed=0)
    start = time.perf_counter()
    for t in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[t % 4096])
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def mujoco_render_rate(env_id, frames):
    import gymnasium as gym

    env = gym.make(env_id, render_mode="rgb_array", width=64, height=64)
    env.reset(seed=0)
    env.action_space.seed(0)
    env.render()
    start = time.perf_counter()
    for _ in range(frames):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        env.render()
        if terminated or truncated:
            env.reset()
    return frames / (time.perf_counter() - start)


def dreamgym_bench(binary, steps, extra):
    out = subprocess.run(
        [binary, "bench", "envs", "--json", "--steps", str(steps), "--vec-steps", str(3 * steps)] + extra,
        check=True, capture_output=True, text=True,
    ).stdout
    return {json.loads(line)["env"]: json.loads(line) for line in out.splitlines()}


def envpool_rate(task_ids, num_envs, threads, steps):
    import envpool

    last_error = None
    for task in task_ids:
        try:
            env = envpool.make_gymnasium(task, num_envs=num_envs, batch_size=num_envs, num_threads=threads, seed=0)
        except Exception as e:  # the task id this envpool version knows
            last_error = e
            continue
        space = env.action_space
        if hasattr(space, "n"):
            acts = np.random.default_rng(0).integers(0, space.n, size=(64, num_envs))
        else:
            acts = np.random.default_rng(0).uniform(space.low, space.high, size=(64, num_envs) + space.shape).astype(np.float32)
        env.reset()
        iters = max(1, steps // num_envs)
        start = time.perf_counter()
        for i in range(iters):
            env.step(acts[i % 64])
        return task, iters * num_envs / (time.perf_counter() - start)
    raise RuntimeError(f"envpool knows none of {task_ids}: {last_error}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dreamgym", default="target/release/dreamgym")
    p.add_argument("--steps", type=int, default=100_000)
    args = p.parse_args()

    print("== dreamgym", flush=True)
    ours = dreamgym_bench(args.dreamgym, args.steps, [])
    for row in ours.values():
        vec = {v["workers"]: v["steps_per_s"] for v in row["vectorized"]}
        print(f"  {row['env']:<14} 1 env {row['single_steps_per_s']:>10.0f}/s   64 envs: 1 worker {vec.get(1, 0):>10.0f}/s  2 workers {vec.get(2, 0):>10.0f}/s  ({vec.get(2, 0) / max(vec.get(1, 1), 1):.2f}x)")

    print("== Gymnasium, plain Python loop (1 thread)", flush=True)
    py = {}
    for env_id in ["CartPole-v1", "InvertedPendulum-v5", "Reacher-v5"]:
        py[env_id] = python_loop(env_id, args.steps if env_id == "CartPole-v1" else args.steps // 2)
        print(f"  {env_id:<20} {py[env_id]:>10.0f}/s")

    print("== EnvPool, 64 envs per batch", flush=True)
    pool = {}
    for name, ids in [("InvertedPendulum", ["InvertedPendulum-v5", "InvertedPendulum-v4"]), ("Reacher", ["Reacher-v5", "Reacher-v4"])]:
        for threads in [1, 2]:
            task, rate = envpool_rate(ids, 64, threads, 3 * args.steps)
            pool[(name, threads)] = rate
            print(f"  {task:<20} {threads} thread(s) {rate:>10.0f}/s")

    cp = ours["CartPole-v0"]["single_steps_per_s"]
    re = ours["Reacher-v0"]["single_steps_per_s"]
    print("== ratios (goal in brackets)")
    print(f"  CartPole-v0 1 thread / EnvPool InvertedPendulum 1 thread: {cp / pool[('InvertedPendulum', 1)]:.2f}x  [>= 2]")
    print(f"  CartPole-v0 1 thread / Gymnasium CartPole-v1 Python loop: {cp / py['CartPole-v1']:.2f}x  [>= 1]")
    print(f"  Reacher-v0 1 thread / EnvPool Reacher 1 thread:          {re / pool[('Reacher', 1)]:.2f}x  [>= 1]")
    print(f"  Reacher-v0 1 thread / Gymnasium Reacher-v5 Python loop:  {re / py['Reacher-v5']:.2f}x")
    for env_id, row in ours.items():
        vec = {v["workers"]: v["steps_per_s"] for v in row["vectorized"]}
        if 1 in vec and 2 in vec:
            print(f"  {env_id} VecEnv 2 workers / 1 worker:                 {vec[2] / vec[1]:.2f}x  [>= 1.8]")
    ip1, ip2 = pool[("InvertedPendulum", 1)], pool[("InvertedPendulum", 2)]
    print(f"  (EnvPool InvertedPendulum 2 threads / 1 thread:            {ip2 / ip1:.2f}x)")

    print("== pixels: 64x64 RGB, a step per frame", flush=True)
    pix = dreamgym_bench(args.dreamgym, args.steps // 5, ["--set", "obs=pixels"])
    for env_id, row in pix.items():
        vec = {v["workers"]: v["steps_per_s"] for v in row["vectorized"]}
        print(f"  dreamgym {env_id:<14} 1 env {row['single_steps_per_s']:>9.0f} frames/s   64 envs: 1 worker {vec.get(1, 0):>9.0f}  2 workers {vec.get(2, 0):>9.0f}")
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    mj = {}
    for env_id in ["InvertedPendulum-v5", "Reacher-v5"]:
        mj[env_id] = mujoco_render_rate(env_id, 1000)
        print(f"  MuJoCo {env_id:<20} {mj[env_id]:>9.0f} frames/s ({os.environ['MUJOCO_GL']})")
    print("== pixel ratios (goal in brackets)")
    print(f"  Racer-v0 frames/s per core: {pix['Racer-v0']['single_steps_per_s']:.0f}  [>= 2000]")
    print(f"  Racer-v0 / MuJoCo InvertedPendulum-v5:    {pix['Racer-v0']['single_steps_per_s'] / mj['InvertedPendulum-v5']:.1f}x  [>= 2]")
    print(f"  CartPole-v0 / MuJoCo InvertedPendulum-v5: {pix['CartPole-v0']['single_steps_per_s'] / mj['InvertedPendulum-v5']:.1f}x")
    print(f"  Reacher-v0 / MuJoCo Reacher-v5:           {pix['Reacher-v0']['single_steps_per_s'] / mj['Reacher-v5']:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
