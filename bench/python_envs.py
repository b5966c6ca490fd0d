"""dreamgym's envs from Python against Gymnasium's, in one run on the same machine.

    pip install ./python            # the dreamgym package (and gymnasium, numpy)
    pip install "gymnasium[mujoco]"   # optional: MuJoCo's Reacher-v5 beside Reacher-v0
    python bench/python_envs.py

Single env: steps per second of ``env.step`` with random actions (resets included), through
Gymnasium's ``make`` (its checkers and wrappers) for both. Vector env: 64 envs, steps per
second counted per env (64 per call): dreamgym's ``make_vec`` on 1 and 2 worker threads
against Gymnasium's own vectorized CartPole (numpy, ``vectorization_mode="vector_entry_point"``)
and its ``SyncVectorEnv``. Prints a Markdown table with ratios.
"""

import time

import gymnasium as gym
import numpy as np

import dreamgym


def single(env, seconds):
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(1000)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        n += len(actions)
    return n / (time.perf_counter() - t0)


def vector(vec, seconds):
    vec.reset(seed=0)
    vec.action_space.seed(0)
    actions = [vec.action_space.sample() for _ in range(100)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a in actions:
            vec.step(a)
        n += len(actions) * vec.num_envs
    return n / (time.perf_counter() - t0)


def main():
    seconds = 3.0
    rows = []
    for ours, theirs in [("CartPole-v0", "CartPole-v1"), ("Reacher-v0", "Reacher-v5")]:
        a = single(gym.make(f"dreamgym/{ours}"), seconds)
        try:
            b = single(gym.make(theirs), seconds)
        except Exception as e:  # MuJoCo not installed
            print(f"({theirs}: {e})")
            b = float("nan")
        rows.append((f"single env: dreamgym/{ours} vs {theirs}", a, b))
    gym_vec = gym.make_vec("CartPole-v1", num_envs=64, vectorization_mode="vector_entry_point")
    gym_sync = gym.make_vec("CartPole-v1", num_envs=64, vectorization_mode="sync")
    theirs_vec = vector(gym_vec, seconds)
    theirs_sync = vector(gym_sync, seconds)
    for workers in (1, 2):
        ours = vector(dreamgym.make_vec("CartPole-v0", num_envs=64, workers=workers), seconds)
        rows.append((f"64 envs: dreamgym make_vec ({workers} workers) vs Gymnasium's numpy CartPole", ours, theirs_vec))
        rows.append((f"64 envs: dreamgym make_vec ({workers} workers) vs Gymnasium's SyncVectorEnv", ours, theirs_sync))
    print("| what | dreamgym steps/s | Gymnasium steps/s | ratio |")
    print("|---|---|---|---|")
    for what, a, b in rows:
        print(f"| {what} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
