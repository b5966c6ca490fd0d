"""Stable-Baselines3's SAC on dreamgym's Reacher-v0 (MuJoCo's Reacher rebuilt on rapier, the
same rewards as Reacher-v5).

    pip install ./python stable-baselines3
    python examples/python/sb3_sac_reacher.py --timesteps 30000

Prints the mean return of 20 greedy evaluation episodes next to a random policy's; a random
policy scores about -43 and a trained one about -4 to -5 on MuJoCo's Reacher-v5.
"""

import argparse
import time

import gymnasium as gym
import numpy as np
from stable_baselines3 import SAC
from stable_baselines3.common.evaluation import evaluate_policy

import dreamgym  # noqa: F401  (registers the dreamgym/ envs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--timesteps", type=int, default=30_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    env = gym.make("dreamgym/Reacher-v0")
    model = SAC("MlpPolicy", env, learning_starts=1000, seed=args.seed, device="cpu", verbose=0)
    t0 = time.time()
    model.learn(total_timesteps=args.timesteps)
    seconds = time.time() - t0
    eval_env = gym.make("dreamgym/Reacher-v0")
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)
    rng = np.random.default_rng(0)
    random_returns = []
    for ep in range(20):
        eval_env.reset(seed=10_000 + ep)
        total, done = 0.0, False
        while not done:
            _, r, te, tr, _ = eval_env.step(rng.uniform(-1, 1, 2).astype(np.float32))
            total += r
            done = te or tr
        random_returns.append(total)
    print(
        f"SAC on dreamgym/Reacher-v0: {args.timesteps} steps in {seconds:.0f} s; greedy return "
        f"{mean:.1f} +- {std:.1f} over 20 episodes (random policy {np.mean(random_returns):.1f})"
    )


if __name__ == "__main__":
    main()
