"""Stable-Baselines3 learns on a dreamgym env (a short smoke run; the full runs are
examples/python/sb3_*.py). Skipped where SB3 is not installed: it brings torch, about 7 GB with
its CUDA libraries from PyPI, which CI does not install."""

import gymnasium as gym
import numpy as np
import pytest

import dreamgym  # noqa: F401  (registers dreamgym/)

sb3 = pytest.importorskip("stable_baselines3")


def test_sb3_checks_the_env_and_ppo_learns_cartpole():
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    check_env(gym.make("dreamgym/CartPole-v0").unwrapped, warn=True)
    check_env(gym.make("dreamgym/Reacher-v0").unwrapped, warn=True)

    env = make_vec_env("dreamgym/CartPole-v0", n_envs=8, seed=2)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                n_epochs=20, ent_coef=0.0, learning_rate=1e-3, seed=2, device="cpu")
    eval_env = gym.make("dreamgym/CartPole-v0")
    before, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    model.learn(total_timesteps=20_000)
    after, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    # A random policy lasts about 22 steps; the untrained net's greedy policy about 10.
    assert after >= 150 and after > 3 * before, (before, after)
    assert np.isfinite(after)
