"""dreamgym's preference losses against TRL's DPOTrainer: loss, log-probs, metrics and gradients.

    pip install torch transformers trl safetensors tokenizers
    cargo build --release -p dreamgym-policies --example lm_bench
    python3 bench/dpo_parity.py [--threads 2] [--steps 6]

For each loss type (sigmoid, ipo, hinge, robust with label smoothing 0.1), the same tiny random
Llama policy, a perturbed copy of it as the frozen reference, and the same batch of pairs of token
ids go through TRL (bench/dpo_trl_reference.py: a real DPOTrainer, its collator and its
compute_loss) and through dreamgym (`lm_bench dpo`). Every number must agree to about 1e-5
relative (gradients: the largest difference over a tensor, relative to its largest entry).
Then a DPO step (forward, backward, AdamW; reference log-probs computed once on both sides) is
timed on both, on the same threads. Prints PARITY OK or PARITY FAILED.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "examples", "lm_bench")
sys.path.insert(0, HERE)
from dpo_trl_reference import tiny_llama  # noqa: E402

LOSSES = [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.1)]


def call(cmd, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def step_time(stdout):
    for line in stdout.splitlines():
        if line.startswith("{") and "dpo_step_s" in line:
            return json.loads(line)["dpo_step_s"]
    sys.exit(f"no step time in:\n{stdout}")


def compare(ours, theirs):
    worst = {}
    for key in ("loss", "chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
                "rewards.chosen", "rewards.rejected", "rewards.margins", "rewards.accuracies",
                "logps.chosen", "logps.rejected"):
        a, b = ours[key].double(), theirs[key].double()
        worst[key] = ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
    grads = [k for k in theirs if k.startswith("grad.")]
    missing = [k for k in grads if k not in ours]
    if missing:
        sys.exit(f"dreamgym has no {missing[:3]}")
    g = max(((ours[k].double() - theirs[k].double()).abs().max()
             / theirs[k].double().abs().max().clamp_min(1e-12)).item() for k in grads)
    worst["gradients"] = g
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--tol", type=float, default=3e-5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release -p dreamgym-policies --example lm_bench")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        policy_dir, ref_dir = os.path.join(tmp, "policy"), os.path.join(tmp, "reference")
        policy, vocab = tiny_llama(policy_dir, seed=0)
        tiny_llama(ref_dir, seed=1, perturb_from=policy)
        g = torch.Generator().manual_seed(7)

        def ids(n):
            return torch.randint(2, vocab, (n,), generator=g).tolist()

        # Lengths differ, so TRL's collator pads both halves of its batch.
        pairs = [{"prompt": ids(p), "chosen": ids(c), "rejected": ids(r)}
                 for p, c, r in [(5, 7, 3), (9, 2, 6), (3, 11, 8), (12, 4, 4)]]
        print(f"tiny Llama (3 layers, 64 wide, vocab {vocab}), {len(pairs)} pairs, beta 0.1")
        print("| loss | worst relative difference (loss, log-probs, metrics, gradients) | |")
        print("|---|---|---|")
        for loss_type, eps in LOSSES:
            batch = os.path.join(tmp, f"{loss_type}.json")
            json.dump({"beta": 0.1, "loss_type": loss_type, "label_smoothing": eps, "pairs": pairs}, open(batch, "w"))
            theirs_path, ours_path = os.path.join(tmp, f"trl_{loss_type}.st"), os.path.join(tmp, f"dg_{loss_type}.st")
            call([sys.executable, os.path.join(HERE, "dpo_trl_reference.py"), policy_dir, ref_dir, batch,
                  theirs_path], a.threads)
            call([BIN, "dpo", policy_dir, ref_dir, batch, ours_path], a.threads)
            worst = compare(load_file(ours_path), load_file(theirs_path))
            top = max(worst.values())
            good = top < a.tol
            ok &= good
            name = f"{loss_type} (label smoothing {eps})" if eps else loss_type
            print(f"| {name} | {top:.2e} (gradients {worst['gradients']:.2e}) | {'ok' if good else 'MISMATCH ' + str(worst)} |")

        if a.steps > 0:
            batch = os.path.join(tmp, "sigmoid.json")
            theirs = step_time(call([sys.executable, os.path.join(HERE, "dpo_trl_reference.py"), policy_dir, ref_dir,
                                     batch, os.path.join(tmp, "t.st"), str(a.steps)], a.threads))
            ours = step_time(call([BIN, "dpo", policy_dir, ref_dir, batch, os.path.join(tmp, "o.st"),
                                   str(a.steps)], a.threads))
            print(f"\nDPO step (forward, backward, AdamW), {a.threads} threads: dreamgym {ours * 1e3:.1f} ms, "
                  f"TRL {theirs * 1e3:.1f} ms: {theirs / ours:.2f}x TRL's speed")
    print("PARITY OK" if ok else "PARITY FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
