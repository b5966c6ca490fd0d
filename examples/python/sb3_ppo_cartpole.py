"""Stable-Baselines3's PPO on dreamgym's CartPole-v0, to the maximum return of 500.

    pip install ./python stable-baselines3
    python examples/python/sb3_ppo_cartpole.py            # about 100k steps, a few minutes

The env is a plain Gymnasium env (``gym.make("dreamgym/CartPole-v0")``), so SB3's own vector
env wraps it; the hyperparameters are rl-baselines3-zoo's for CartPole-v1. Prints the mean
return of 20 greedy evaluation episodes and exits with status 1 below ``--target``.
"""

import argparse
import sys
import time

import gymnasium as gym
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

import dreamgym  # noqa: F401  (registers the dreamgym/ envs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--timesteps", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=475.0, help="return to reach (CartPole-v1's threshold)")
    args = p.parse_args()

    env = make_vec_env("dreamgym/CartPole-v0", n_envs=8, seed=args.seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=lambda f: 1e-3 * f,
        clip_range=lambda f: 0.2 * f,
        seed=args.seed,
        device="cpu",
        verbose=0,
    )
    t0 = time.time()
    model.learn(total_timesteps=args.timesteps)
    seconds = time.time() - t0
    mean, std = evaluate_policy(
        model, gym.make("dreamgym/CartPole-v0"), n_eval_episodes=20, deterministic=True
    )
    print(
        f"PPO on dreamgym/CartPole-v0: {args.timesteps} steps in {seconds:.0f} s; "
        f"greedy return {mean:.1f} +- {std:.1f} over 20 episodes"
    )
    return 0 if mean >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
