"""Parity of dreamgym's transformer core with PyTorch, written here from PyTorch's own ops
(F.layer_norm, F.scaled_dot_product_attention, F.gelu(approximate="tanh"), F.silu): the same
weights and inputs give the same outputs, loss and every gradient, for the Decision Transformer
(GPT-2 choices) and a language model (Llama choices: RMSNorm, rotary, SwiGLU, grouped-query
attention, tied head).

    cargo run --release -p dreamgym-policies --example transformer_parity_dump -- /tmp/tparity
    bench-venv/bin/python bench/transformer_parity.py /tmp/tparity
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def linear(p, name, x, bias):
    y = x @ p[f"{name}.weight"].T
    return y + p[f"{name}.bias"] if bias else y


def norm(p, name, x, cfg):
    w = p[f"{name}.weight"]
    if cfg["norm"] == "layer_norm":
        b = p.get(f"{name}.bias")
        return F.layer_norm(x, (x.shape[-1],), w, b, cfg["norm_eps"])
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["norm_eps"]) * w


def rotary(x, theta):
    # x: [B, H, T, D]; the "rotate half" layout of Hugging Face's Llama.
    t, d = x.shape[2], x.shape[3]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = ang.cos().float(), ang.sin().float()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def transformer(p, prefix, x, cfg, dropout=0.0):
    # `dropout` (training only): on the input and on each residual branch, as dreamgym's core
    # and GPT-2's embd_pdrop / resid_pdrop.
    def drop(y):
        return F.dropout(y, dropout) if dropout > 0 else y

    b, t, c = x.shape
    h = cfg["n_head"]
    kv = cfg["n_kv_head"] or h
    hd = c // h
    bias = cfg["bias"]
    if cfg["positions"] == "learned":
        x = x + p[f"{prefix}embed_positions.weight"][:t]
    x = drop(x)
    for i in range(cfg["n_layer"]):
        l = f"{prefix}layers.{i}"
        n = norm(p, f"{l}.input_layernorm", x, cfg)
        q = linear(p, f"{l}.self_attn.q_proj", n, bias).view(b, t, h, hd).transpose(1, 2)
        k = linear(p, f"{l}.self_attn.k_proj", n, bias).view(b, t, kv, hd).transpose(1, 2)
        v = linear(p, f"{l}.self_attn.v_proj", n, bias).view(b, t, kv, hd).transpose(1, 2)
        if cfg["positions"] == "rotary":
            q, k = rotary(q, cfg["rope_theta"]), rotary(k, cfg["rope_theta"])
        k = k.repeat_interleave(h // kv, dim=1)
        v = v.repeat_interleave(h // kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + drop(linear(p, f"{l}.self_attn.o_proj", y.transpose(1, 2).reshape(b, t, c), bias))
        n = norm(p, f"{l}.post_attention_layernorm", x, cfg)
        if cfg["mlp"] == "swi_glu":
            hidden = F.silu(linear(p, f"{l}.mlp.gate_proj", n, bias)) * linear(
                p, f"{l}.mlp.up_proj", n, bias
            )
        else:
            hidden = F.gelu(linear(p, f"{l}.mlp.up_proj", n, bias), approximate="tanh")
        x = x + drop(linear(p, f"{l}.mlp.down_proj", hidden, bias))
    return norm(p, f"{prefix}norm", x, cfg)


def decision_transformer(p, io, cfg, dropout=0.0):
    t = io["timesteps"].clamp(0, cfg["max_timestep"] - 1)
    time = p["embed_timestep.weight"][t]
    r = linear(p, "embed_return", io["returns"], True) + time
    s = linear(p, "embed_state", io["obs"], True) + time
    a = linear(p, "embed_action", io["actions"], True) + time
    b, k, c = s.shape
    x = torch.stack([r, s, a], dim=2).reshape(b, 3 * k, c)
    x = F.layer_norm(x, (c,), p["embed_ln.weight"], p["embed_ln.bias"], 1e-5)
    h = transformer(p, "transformer.", x, cfg["transformer"], dropout)
    pred = torch.tanh(linear(p, "predict_action", h.reshape(b, k, 3, c)[:, :, 1], True))
    return pred, (pred - io["actions"]).pow(2).mean()


def language_model(p, io, cfg):
    ids = io["ids"]
    x = p["model.embed_tokens.weight"][ids]
    h = transformer(p, "model.", x, cfg["transformer"])
    head = p["model.embed_tokens.weight"] if cfg["tie_embeddings"] else p["lm_head.weight"]
    logits = h @ head.T
    v = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1))
    return logits, loss


def compare(name, ours, theirs, rtol):
    ours, theirs = ours.double(), theirs.double()
    err = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    ok = err <= rtol * max(scale, 1e-6)
    print(f"{'ok  ' if ok else 'FAIL'} {name:48s} max |diff| {err:.3e}  (max |value| {scale:.3e})")
    return ok


def check(d, name, model, out_key):
    cfg = json.load(open(os.path.join(d, f"{name}.json")))
    p = {k: v.clone().requires_grad_(True) for k, v in load_file(os.path.join(d, f"{name}.safetensors")).items()}
    io = load_file(os.path.join(d, f"{name}_io.safetensors"))
    out, loss = model(p, io, cfg)
    loss.backward()
    ok = compare(f"{name} {out_key}", io[out_key], out.detach(), 1e-5)
    ok &= compare(f"{name} loss", io["loss"][0], loss.detach(), 1e-5)
    for k in sorted(p):
        ok &= compare(f"{name} grad {k}", io[f"grad.{k}"], p[k].grad, 1e-4)
    return ok


def main(d):
    torch.manual_seed(0)
    ok = check(d, "dt", decision_transformer, "pred")
    ok &= check(d, "lm", language_model, "logits")
    print("PARITY OK" if ok else "PARITY FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tparity")
