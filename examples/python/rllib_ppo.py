"""RLlib's PPO on a dreamgym env, with N env runners on a Ray cluster.

    pip install ./python "ray[rllib]" torch
    ray start --head                          # a local cluster on this machine
    python examples/python/rllib_ppo.py --address auto --env-runners 2

On a cluster of several machines, start Ray on each (``ray start --address HEAD:6379`` on the
others, with the dreamgym package installed everywhere) and pass ``--address HEAD:6379``;
without ``--address`` the script starts a Ray instance of its own. Each env runner is a Ray
actor that builds its dreamgym env from the Gymnasium registry (``import dreamgym`` registers
it inside the actor). Prints the mean episode return after each training iteration, and stops
at ``--target`` or after ``--iterations``.
"""

import argparse
import time

import ray
from ray.rllib.algorithms.ppo import PPOConfig
from ray.tune.registry import register_env


def make_env(config):
    import gymnasium as gym

    import dreamgym  # noqa: F401  (registers dreamgym/ in this process)

    return gym.make(f"dreamgym/{config.get('id', 'CartPole-v0')}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="CartPole-v0")
    p.add_argument("--address", default=None, help="a Ray cluster's address ('auto': the local one)")
    p.add_argument("--env-runners", type=int, default=2)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--target", type=float, default=450.0)
    args = p.parse_args()

    ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    register_env("dreamgym", make_env)
    config = (
        PPOConfig()
        .environment("dreamgym", env_config={"id": args.env})
        .env_runners(num_env_runners=args.env_runners, num_envs_per_env_runner=4)
        .training(lr=3e-4, gamma=0.99, num_epochs=10, minibatch_size=256, train_batch_size_per_learner=4000)
        .framework("torch")
    )
    algo = config.build_algo()
    t0 = time.time()
    for i in range(1, args.iterations + 1):
        result = algo.train()
        ret = result["env_runners"]["episode_return_mean"]
        steps = result["num_env_steps_sampled_lifetime"]
        print(f"iteration {i}: {steps} env steps, mean episode return {ret:.1f}, {time.time() - t0:.0f} s")
        if ret >= args.target:
            break
    algo.stop()
    ray.shutdown()


if __name__ == "__main__":
    main()
