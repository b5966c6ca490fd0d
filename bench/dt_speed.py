"""Decision Transformer speed, dreamgym beside PyTorch on this machine in one run: training
steps (AdamW, 64 windows, dropout 0.1) and acting latency per step (PyTorch recomputes the
context each step, as the authors' code does; dreamgym with and without its KV cache).

    cargo build --release --example dt_speed
    bench-venv/bin/python bench/dt_speed.py [paper|large] [steps] [cpu|cuda] [f32|tf32]

On cuda (dreamgym built with `--features cuda`) both sides synchronize before reading the
clock; `tf32` lets both use TF32 tensor cores for f32 matrix products.
"""
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from transformer_parity import decision_transformer  # noqa: E402

# Timed acting episodes (after one untimed), as examples/dt_speed.rs.
ACT_EPISODES = 5
SIZES = {"paper": (3, 128, 1, 20), "large": (6, 512, 8, 30)}


def params(layers, width, obs, act, max_t, dev):
    shapes = {
        "embed_return.weight": (width, 1), "embed_return.bias": (width,),
        "embed_state.weight": (width, obs), "embed_state.bias": (width,),
        "embed_action.weight": (width, act), "embed_action.bias": (width,),
        "embed_timestep.weight": (max_t, width),
        "embed_ln.weight": (width,), "embed_ln.bias": (width,),
        "predict_action.weight": (act, width), "predict_action.bias": (act,),
        "transformer.norm.weight": (width,), "transformer.norm.bias": (width,),
    }
    for i in range(layers):
        l = f"transformer.layers.{i}"
        for n in ["input_layernorm", "post_attention_layernorm"]:
            shapes[f"{l}.{n}.weight"] = (width,)
            shapes[f"{l}.{n}.bias"] = (width,)
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"]:
            shapes[f"{l}.self_attn.{n}.weight"] = (width, width)
            shapes[f"{l}.self_attn.{n}.bias"] = (width,)
        shapes[f"{l}.mlp.up_proj.weight"] = (4 * width, width)
        shapes[f"{l}.mlp.up_proj.bias"] = (4 * width,)
        shapes[f"{l}.mlp.down_proj.weight"] = (width, 4 * width)
        shapes[f"{l}.mlp.down_proj.bias"] = (width,)
    return {k: (torch.randn(s, device=dev) * 0.02).requires_grad_(True) for k, s in shapes.items()}


def main(size, steps, dev="cpu", precision="f32"):
    torch.set_num_threads(2)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    layers, width, heads, k = SIZES[size]
    obs, act, batch = 17, 6, 64
    cfg = {
        "max_timestep": 1000,
        "transformer": {"n_layer": layers, "n_head": heads, "n_kv_head": 0, "norm": "layer_norm",
                        "norm_eps": 1e-5, "positions": "none", "mlp": "gelu", "bias": True},
    }
    p = params(layers, width, obs, act, 1000, dev)
    opt = torch.optim.AdamW(p.values(), lr=1e-4, weight_decay=1e-4)
    io = {
        "returns": torch.rand(batch, k, 1), "obs": torch.rand(batch, k, obs),
        "actions": torch.rand(batch, k, act) * 2 - 1,
        "timesteps": torch.arange(k).repeat(batch, 1),
    }
    io = {key: v.to(dev) for key, v in io.items()}

    def step():
        # Dropout 0.1 on the input and on each residual branch, as dreamgym's (and GPT-2's).
        _, loss = decision_transformer(p, io, cfg, dropout=0.1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(p.values(), 0.25)
        opt.step()

    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train = (time.perf_counter() - t0) / steps
    # Acting: each step recomputes the last K steps (the authors' get_action), no grad.
    # Episodes of 2K steps, one untimed warm-up and ACT_EPISODES timed, as dreamgym's.
    with torch.no_grad():
        hist = {key: v[:1] for key, v in io.items()}
        n = 2 * k

        def episode():
            for t in range(n):
                w = min(t + 1, k)
                sub = {key: v[:, :w] for key, v in hist.items()}
                logits, _ = decision_transformer(p, sub, cfg)
                logits.cpu()  # the action reaches the host, as dreamgym's does

        episode()
        t0 = time.perf_counter()
        for _ in range(ACT_EPISODES):
            episode()
        act_ms = (time.perf_counter() - t0) / (ACT_EPISODES * n) * 1e3
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "target"))
    exe = os.path.join(target, "release", "examples", "dt_speed")
    ours = json.loads(subprocess.check_output([exe, size, str(steps), dev, precision], text=True))
    torch_ms = train * 1e3
    print(f"{size} on {dev} ({precision}):")
    print(f"{size}: train step  dreamgym {ours['train_step_ms']:.1f} ms, PyTorch {torch_ms:.1f} ms "
          f"(dreamgym/PyTorch throughput {torch_ms / ours['train_step_ms']:.2f}x)")
    print(f"{size}: first loss dreamgym {ours['first_loss']:.6f} (same weights and batch on every "
          f"device; PyTorch's own init differs), after {steps + 4} steps {ours['last_loss']:.6f}")
    print(f"{size}: act / step  dreamgym {ours['act_ms_cached']:.2f} ms cached, "
          f"{ours['act_ms_uncached']:.2f} ms uncached; PyTorch {act_ms:.2f} ms")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if len(a) > 0 else "paper", int(a[1]) if len(a) > 1 else 20,
         a[2] if len(a) > 2 else "cpu", a[3] if len(a) > 3 else "f32")
