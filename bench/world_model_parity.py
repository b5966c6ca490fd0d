"""Parity of dreamgym's V and M with PyTorch: the same weights and inputs give the same losses
and gradients within float32 tolerance.

    cargo run --release -p dreamgym-world-model --example parity_dump -- /tmp/parity
    bench-venv/bin/python bench/world_model_parity.py /tmp/parity
"""
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from torch_models import MdnRnn, Vae  # noqa: E402


def compare(name, ours, theirs, rtol):
    ours, theirs = ours.double(), theirs.double()
    err = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    ok = err <= rtol * max(scale, 1e-6)
    print(f"{'ok  ' if ok else 'FAIL'} {name:32s} max |diff| {err:.3e}  (max |value| {scale:.3e})")
    return ok


def main(d):
    torch.set_default_dtype(torch.float32)
    ok = True
    # V: NHWC in dreamgym, NCHW in PyTorch.
    io = load_file(os.path.join(d, "vae_io.safetensors"))
    vae = Vae()
    vae.load_state_dict(load_file(os.path.join(d, "vae.safetensors")))
    x = io["x"].permute(0, 3, 1, 2).contiguous()
    total, recon, kl = vae.loss(x, io["eps"])
    total.backward()
    ok &= compare("vae loss", io["loss"][0], total.detach(), 1e-5)
    ok &= compare("vae reconstruction", io["reconstruction"][0], recon.detach(), 1e-5)
    ok &= compare("vae kl", io["kl"][0], kl.detach(), 1e-5)
    for name, p in vae.named_parameters():
        ok &= compare(f"vae grad {name}", io[f"grad.{name}"], p.grad, 1e-3)
    # M.
    io = load_file(os.path.join(d, "mdnrnn_io.safetensors"))
    m = MdnRnn()
    m.load_dreamgym(load_file(os.path.join(d, "mdnrnn.safetensors")))
    total, z_nll, r, dn = m.loss(io["z"], io["actions"], io["rewards"], io["dones"])
    total.backward()
    for k, v in [("loss", total), ("z_nll", z_nll), ("reward", r), ("done", dn)]:
        ok &= compare(f"mdn {k}", io[k][0], v.detach(), 1e-5)
    for name, p in m.named_parameters():
        key = name[:-3] if name.startswith("lstm.") else name
        ok &= compare(f"mdn grad {name}", io[f"grad.{key}"], p.grad, 1e-3)
    print("PARITY OK" if ok else "PARITY FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "parity")
