"""CleanRL-style single-file PPO on a dreamgym vector env (``dreamgym.make_vec``).

    pip install ./python torch
    python examples/python/cleanrl_ppo.py --env CartPole-v0 --num-envs 8 --workers 2

The PPO of CleanRL's ``ppo.py`` (discrete actions, GAE, clipped surrogate, value clipping,
advantage normalisation, linear learning-rate decay), adapted to Gymnasium 1.x's NEXT_STEP
autoreset: the step after an episode ends only resets that env (its action is ignored, its
reward is 0), so that step is left out of the loss and the advantage recursion stops there.
Episode returns are summed here from the rewards. Prints the mean return of the last 20
finished episodes as it goes, and a greedy evaluation at the end.
"""

import argparse
import time
from collections import deque

import numpy as np
import torch
import torch.nn as nn
from torch.distributions.categorical import Categorical

import dreamgym


def layer(i, o, std=np.sqrt(2), bias=0.0):
    lin = nn.Linear(i, o)
    nn.init.orthogonal_(lin.weight, std)
    nn.init.constant_(lin.bias, bias)
    return lin


class Agent(nn.Module):
    def __init__(self, obs_dim, n_actions):
        super().__init__()
        self.critic = nn.Sequential(
            layer(obs_dim, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, 1, std=1.0)
        )
        self.actor = nn.Sequential(
            layer(obs_dim, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, n_actions, std=0.01)
        )

    def value(self, x):
        return self.critic(x)

    def act(self, x, action=None):
        logits = self.actor(x)
        dist = Categorical(logits=logits)
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.critic(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="CartPole-v0")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--total-timesteps", type=int, default=200_000)
    p.add_argument("--num-steps", type=int, default=128)
    p.add_argument("--lr", type=float, default=2.5e-4)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--gae-lambda", type=float, default=0.95)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--clip", type=float, default=0.2)
    p.add_argument("--ent-coef", type=float, default=0.01)
    p.add_argument("--vf-coef", type=float, default=0.5)
    p.add_argument("--max-grad-norm", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(1)
    envs = dreamgym.make_vec(args.env, num_envs=args.num_envs, workers=args.workers)
    n, t_len = args.num_envs, args.num_steps
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    agent = Agent(obs_dim, int(envs.single_action_space.n))
    opt = torch.optim.Adam(agent.parameters(), lr=args.lr, eps=1e-5)

    obs_buf = torch.zeros((t_len, n, obs_dim))
    act_buf = torch.zeros((t_len, n), dtype=torch.long)
    logp_buf = torch.zeros((t_len, n))
    rew_buf = torch.zeros((t_len, n))
    done_buf = torch.zeros((t_len, n))  # the episode ended at this step
    skip_buf = torch.zeros((t_len, n))  # this step was an autoreset (no transition)
    val_buf = torch.zeros((t_len, n))

    obs, _ = envs.reset(seed=args.seed)
    obs = torch.as_tensor(obs, dtype=torch.float32)
    ended = np.zeros(n, dtype=bool)
    running = np.zeros(n)
    returns = deque(maxlen=20)
    updates = args.total_timesteps // (n * t_len)
    t0, global_step = time.time(), 0
    for update in range(1, updates + 1):
        for g in opt.param_groups:
            g["lr"] = args.lr * (1.0 - (update - 1.0) / updates)
        for t in range(t_len):
            global_step += n
            obs_buf[t] = obs
            skip_buf[t] = torch.as_tensor(ended, dtype=torch.float32)
            with torch.no_grad():
                action, logp, _, value = agent.act(obs)
            act_buf[t], logp_buf[t], val_buf[t] = action, logp, value.flatten()
            next_obs, reward, terminated, truncated, _ = envs.step(action.numpy())
            rew_buf[t] = torch.as_tensor(reward, dtype=torch.float32)
            done = terminated | truncated
            done_buf[t] = torch.as_tensor(terminated, dtype=torch.float32)
            running[~ended] += reward[~ended]
            for i in np.flatnonzero(done):
                returns.append(running[i])
                running[i] = 0.0
            ended = done
            obs = torch.as_tensor(next_obs, dtype=torch.float32)

        # GAE. A step's successor is the next step of the same env, unless the episode ended
        # there (terminated: no bootstrap; truncated: bootstrap from the final observation is
        # skipped, as CleanRL does) or the next step is an autoreset.
        with torch.no_grad():
            next_value = agent.value(obs).flatten()
            adv = torch.zeros((t_len, n))
            last = torch.zeros(n)
            for t in reversed(range(t_len)):
                if t == t_len - 1:
                    nv = next_value
                    cont = 1.0 - torch.as_tensor(ended, dtype=torch.float32)
                else:
                    nv = val_buf[t + 1]
                    cont = 1.0 - skip_buf[t + 1]
                bootstrap = 1.0 - done_buf[t]
                delta = rew_buf[t] + args.gamma * nv * cont * bootstrap - val_buf[t]
                last = delta + args.gamma * args.gae_lambda * cont * bootstrap * last
                adv[t] = last
            ret = adv + val_buf

        keep = (skip_buf.reshape(-1) == 0).nonzero().flatten()
        b_obs, b_act = obs_buf.reshape(-1, obs_dim)[keep], act_buf.reshape(-1)[keep]
        b_logp, b_adv = logp_buf.reshape(-1)[keep], adv.reshape(-1)[keep]
        b_ret, b_val = ret.reshape(-1)[keep], val_buf.reshape(-1)[keep]
        size = len(keep)
        for _ in range(args.epochs):
            # The kept steps vary in number (autoresets are left out): split them into
            # `minibatches` near-equal parts.
            for idx in torch.randperm(size).chunk(args.minibatches):
                _, logp, entropy, value = agent.act(b_obs[idx], b_act[idx])
                ratio = (logp - b_logp[idx]).exp()
                a = b_adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg = torch.max(-a * ratio, -a * ratio.clamp(1 - args.clip, 1 + args.clip)).mean()
                value = value.flatten()
                v_clipped = b_val[idx] + (value - b_val[idx]).clamp(-args.clip, args.clip)
                v_loss = 0.5 * torch.max(
                    (value - b_ret[idx]) ** 2, (v_clipped - b_ret[idx]) ** 2
                ).mean()
                loss = pg - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                opt.step()
        if update % 10 == 0 or update == updates:
            mean = np.mean(returns) if returns else float("nan")
            sps = global_step / (time.time() - t0)
            print(f"step {global_step}: mean return (last 20 episodes) {mean:.1f}, {sps:.0f} steps/s")

    # Greedy evaluation on fresh seeds.
    env = dreamgym.DreamgymEnv(args.env)
    totals = []
    for ep in range(10):
        o, _ = env.reset(seed=10_000 + ep)
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                logits = agent.actor(torch.as_tensor(o, dtype=torch.float32))
            o, r, te, tr, _ = env.step(int(logits.argmax()))
            total += r
            done = te or tr
        totals.append(total)
    print(
        f"PPO on dreamgym {args.env}: {global_step} steps in {time.time() - t0:.0f} s; "
        f"greedy return {np.mean(totals):.1f} +- {np.std(totals):.1f} over 10 episodes"
    )


if __name__ == "__main__":
    main()
