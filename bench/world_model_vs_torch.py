"""Training throughput of the paper's V and M: dreamgym (candle) beside PyTorch, same
architecture, batch, optimiser and thread count, in one run on this machine.

    bench-venv/bin/pip install torch safetensors
    cargo build --release -p dreamgym-world-model --example bench_train
    bench-venv/bin/python bench/world_model_vs_torch.py [--threads 2] [--repeats 3] [--device cuda]

On cuda (dreamgym built with `--features cuda`) both sides synchronize before reading the clock.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from torch_models import MdnRnn, Vae  # noqa: E402

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "target"))


DEV = "cpu"


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def torch_vae(batch, steps):
    torch.manual_seed(0)
    m = Vae().to(DEV)
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, 64, 64, device=DEV)
    eps = torch.rand(batch, 32, device=DEV)

    def step():
        opt.zero_grad()
        loss, _, _ = m.loss(x, eps)
        loss.backward()
        opt.step()

    step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t)


def torch_mdn(batch, steps, seq=100):
    torch.manual_seed(0)
    m = MdnRnn(reward_head=False, done_head=False).to(DEV)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    z = torch.rand(batch, seq + 1, 32, device=DEV)
    a = torch.rand(batch, seq, 3, device=DEV)
    r = torch.zeros(batch, seq, device=DEV)

    def step():
        opt.zero_grad()
        loss = m.loss(z, a, r, r)[0]
        loss.backward()
        torch.nn.utils.clip_grad_value_(m.parameters(), 1.0)
        opt.step()

    step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t)


def ours(model, batch, steps, threads):
    exe = os.path.join(TARGET, "release", "examples", "bench_train")
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), BENCH_DEVICE=DEV)
    out = subprocess.run([exe, model, str(batch), str(steps)], env=env, check=True,
                         capture_output=True, text=True).stdout
    d = json.loads(out.strip().splitlines()[-1])
    return d["samples_per_s"] if model == "vae" else d["sequences_per_s"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vae-steps", type=int, default=8)
    # M's steps after the warm-up: dreamgym's first timed step still takes about 1.4x a later
    # one (the allocator's memory is faulted in, 2 MB pages cleared on first touch), so 3
    # steps measured start-up more than training; 12 (about 2.5 s a side) measure training.
    p.add_argument("--mdn-steps", type=int, default=12)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args()
    global DEV
    DEV = args.device
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, device {DEV}")
    for name, batch, steps, tf in [("vae", 32, args.vae_steps, torch_vae), ("mdn", 100, args.mdn_steps, torch_mdn)]:
        unit = "samples/s" if name == "vae" else "sequences/s"
        for r in range(args.repeats):
            # Alternate who goes first so drift on a shared machine hits both.
            if r % 2 == 0:
                a = ours(name, batch, steps, args.threads)
                b = tf(batch, steps)
            else:
                b = tf(batch, steps)
                a = ours(name, batch, steps, args.threads)
            print(f"{name} batch {batch}: dreamgym {a:8.1f} {unit}  torch {b:8.1f}  ratio {a / b:.2f}")


if __name__ == "__main__":
    main()
