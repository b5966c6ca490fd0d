"""dreamgym from Python against the peers Python users train with, in one run on one machine.

    pip install ./python envpool "ray[rllib]" torch stable-baselines3
    python bench/python_peers.py [vec] [rllib] [sb3]      # all three without arguments

- ``vec``: vector-env steps per second from Python at batch 64, random actions (sampled
  beforehand), 1 and 2 threads: ``dreamgym.make_vec`` against EnvPool's Gymnasium API
  (``envpool.make_gymnasium``, ``batch_size = num_envs``). CartPole-v0 against EnvPool's
  CartPole-v1 (closed-form C++) and InvertedPendulum-v5 (MuJoCo, the same kind of work as a
  rapier multibody), Reacher-v0 against EnvPool's Reacher-v5 (MuJoCo).
- ``rllib``: RLlib's sampling throughput (PPO's env runners, new API stack, 4 envs per
  runner, the default torch model acting) with 1 and 2 env runners, on dreamgym/CartPole-v0
  and on Gymnasium's CartPole-v1.
- ``sb3``: Stable-Baselines3 PPO (rl-zoo's CartPole settings, 8 envs), wall time until the
  greedy policy returns 500 on 10 evaluation episodes (checked every 8,192 steps, up to 200k
  steps; the evaluations' time is left out), on dreamgym/CartPole-v0 and on Gymnasium's
  CartPole-v1, seeds 0 to 4, and the medians.

Prints Markdown tables with ratios (dreamgym / peer for throughput, peer / dreamgym for time,
so above 1 means dreamgym is faster).
"""

import sys
import time

import gymnasium as gym
import numpy as np

import dreamgym


def vec_rate(step, actions, num_envs, seconds=3.0):
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a in actions:
            step(a)
        n += len(actions) * num_envs
    return n / (time.perf_counter() - t0)


def bench_vec():
    import envpool

    num_envs = 64
    rows = []
    pairs = [
        ("CartPole-v0", "CartPole-v1"),
        ("CartPole-v0", "InvertedPendulum-v5"),
        ("Reacher-v0", "Reacher-v5"),
    ]
    for threads in (1, 2):
        for ours, theirs in pairs:
            ours_env = dreamgym.make_vec(ours, num_envs=num_envs, workers=threads)
            ours_env.reset(seed=0)
            ours_env.action_space.seed(0)
            acts = [ours_env.action_space.sample() for _ in range(100)]
            a = vec_rate(ours_env.step, acts, num_envs)
            ours_env.close()
            pool = envpool.make_gymnasium(
                theirs, num_envs=num_envs, batch_size=num_envs, num_threads=threads, seed=0
            )
            pool.reset()
            space = pool.action_space
            rng = np.random.default_rng(0)
            if isinstance(space, gym.spaces.Discrete):
                acts = [rng.integers(0, space.n, num_envs) for _ in range(100)]
            else:
                acts = [
                    rng.uniform(space.low, space.high, (num_envs,) + space.shape).astype(space.dtype)
                    for _ in range(100)
                ]
            b = vec_rate(pool.step, acts, num_envs)
            pool.close()
            rows.append((f"{ours} vs EnvPool {theirs}, {threads} thread{'s' if threads > 1 else ''}", a, b))
    print(f"\nvector envs from Python, {num_envs} envs, steps/s")
    print("| what | dreamgym | EnvPool | ratio |")
    print("|---|---|---|---|")
    for what, a, b in rows:
        print(f"| {what} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x |")


def make_dreamgym(config):
    import gymnasium as gym

    import dreamgym  # noqa: F401  (registers dreamgym/ in the runner's process)

    return gym.make(config["id"])


def bench_rllib():
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    ray.init(include_dashboard=False, log_to_driver=False)
    register_env("by-id", make_dreamgym)
    rows = []
    # Interleaved, peer first, so that neither side gets the warmer machine.
    for runners in (1, 2):
        for env_id in ("CartPole-v1", "dreamgym/CartPole-v0"):
            config = (
                PPOConfig()
                .environment("by-id", env_config={"id": env_id})
                .env_runners(num_env_runners=runners, num_envs_per_env_runner=4)
                .framework("torch")
            )
            algo = config.build_algo()
            group = algo.env_runner_group
            per_runner = 4000

            def sample(r):
                return sum(len(e) for e in r.sample(num_timesteps=per_runner, random_actions=False))

            group.foreach_env_runner(sample, local_env_runner=False)  # warm-up
            t0 = time.perf_counter()
            steps = 0
            for _ in range(3):
                steps += sum(group.foreach_env_runner(sample, local_env_runner=False))
            rate = steps / (time.perf_counter() - t0)
            algo.stop()
            rows.append((env_id, runners, rate))
    ray.shutdown()
    print("\nRLlib sampling (PPO env runners, 4 envs each, torch model acting), env steps/s")
    print("| env | 1 runner | 2 runners | 2 / 1 |")
    print("|---|---|---|---|")
    for env_id in ("dreamgym/CartPole-v0", "CartPole-v1"):
        r = {n: rate for e, n, rate in rows if e == env_id}
        print(f"| {env_id} | {r[1]:,.0f} | {r[2]:,.0f} | {r[2] / r[1]:.2f}x |")


def sb3_time_to_solve(env_id, seed, max_steps=200_000, check_every=8192):
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    env = make_vec_env(env_id, n_envs=8, seed=seed)
    model = PPO(
        "MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
        ent_coef=0.0, learning_rate=lambda f: 1e-3 * f, clip_range=lambda f: 0.2 * f,
        seed=seed, device="cpu", verbose=0,
    )
    eval_env = gym.make(env_id)
    trained, steps = 0.0, 0
    while steps < max_steps:
        t0 = time.perf_counter()
        model.learn(total_timesteps=check_every, reset_num_timesteps=False)
        trained += time.perf_counter() - t0
        steps = model.num_timesteps
        mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
        if mean >= 500:
            return trained, steps
    return float("nan"), steps


def bench_sb3(seeds=range(5)):
    import torch

    torch.set_num_threads(1)
    print("\nSB3 PPO to a greedy return of 500 (10 episodes), training wall time")
    print("| seed | dreamgym/CartPole-v0 | Gymnasium CartPole-v1 | ratio (Gymnasium / dreamgym) |")
    print("|---|---|---|---|")
    times = {"dreamgym": [], "gymnasium": []}
    for seed in seeds:
        a, sa = sb3_time_to_solve("dreamgym/CartPole-v0", seed)
        b, sb = sb3_time_to_solve("CartPole-v1", seed)
        times["dreamgym"].append(a)
        times["gymnasium"].append(b)
        print(f"| {seed} | {a:.1f} s ({sa:,} steps) | {b:.1f} s ({sb:,} steps) | {b / a:.2f}x |",
              flush=True)
    # Unsolved runs (nan) count as slower than any solved one.
    med = {k: float(np.median([t if t == t else np.inf for t in v])) for k, v in times.items()}
    print(f"| median | {med['dreamgym']:.1f} s | {med['gymnasium']:.1f} s | "
          f"{med['gymnasium'] / med['dreamgym']:.2f}x |")


def main():
    which = sys.argv[1:] or ["vec", "rllib", "sb3"]
    for name in which:
        {"vec": bench_vec, "rllib": bench_rllib, "sb3": bench_sb3}[name]()


if __name__ == "__main__":
    main()
