"""DPO loss, metrics and gradients from TRL's own DPOTrainer, for checking dreamgym's DPO.

    pip install trl            # written against trl 1.16.0, transformers 5.25.0, torch 2.15.0
    python3 bench/dpo_trl_reference.py <policy_dir> <reference_dir> <batch.json> <out.safetensors> [steps]
    python3 bench/dpo_trl_reference.py --selftest     # tiny random Llamas in /tmp, all four loss types

batch.json: {"beta", "loss_type": sigmoid|ipo|hinge|robust, "label_smoothing", "pairs": [{"prompt", "chosen",
"rejected"}: token ids]}. The ids are used as they are (no BOS/EOS added): sequence = prompt + completion, the
loss covers the completion tokens. Output: loss [1]; chosen_logps, rejected_logps, ref_chosen_logps,
ref_rejected_logps [B]; every metric TRL logs, "/" -> "." (rewards.chosen, rewards.rejected, rewards.accuracies,
rewards.margins, logps.chosen, logps.rejected, plus entropy, logits.chosen, logits.rejected, mean_token_accuracy,
num_tokens) [1]; grad.<name> for every policy parameter (the reference is frozen).

What TRL 1.16.0 does (trl/trainer/dpo_trainer.py, DPOTrainer._compute_loss; defaults f_divergence_type=reverse_kl,
ld_alpha=None, use_weighting=False, single loss type with weight 1):
  logps    = sum over completion tokens of log softmax(logits[t-1])[id[t]]  -- SUMMED for every loss type
             (the policy and reference forwards go through trl.trainer.utils.add_fused_lm_head: labels = input_ids
             with prompt/padding set to -100, shifted by one, log-probs from trl/kernels/chunked_logprob.py).
  Δ        = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
  sigmoid  : l = -logsigmoid(β Δ)                      label_smoothing is IGNORED (no cDPO any more; old TRL 0.x
                                                         used -(1-ε)logsigmoid(βΔ) - ε logsigmoid(-βΔ))
  hinge    : l = relu(1 - β Δ)
  ipo      : l = (Δc/nc - Δr/nr - 1/(2β))^2, Δc = chosen_logps - ref_chosen_logps, nc = number of chosen completion
             tokens (completion_mask.sum, unshifted, clamp>=1); the logps stay sums, only the loss averages per token
  robust   : l = (-(1-ε) logsigmoid(βΔ) + ε logsigmoid(-βΔ)) / (1 - 2ε),  ε = label_smoothing
  loss     = mean over the B pairs of l.
  metrics (reduced by mean over the batch, from detached values): rewards/chosen = mean β(chosen_logps -
  ref_chosen_logps), rewards/rejected likewise, rewards/margins = mean(r_c - r_r), rewards/accuracies =
  mean(float(r_c > r_r)) (strict), logps/chosen = mean chosen_logps (sums), logps/rejected likewise. β enters the
  rewards for every loss type (also ipo), with the summed logps.

How TRL is invoked: a real DPOTrainer(model=policy, ref_model=reference, args=DPOConfig(...)) is built on a one-row
dummy text dataset (only needed by the constructor). The given ids go through the trainer's own collator
(trl.trainer.dpo_trainer.DataCollatorForPreference), then trainer.compute_loss(trainer.model, inputs) runs
_compute_loss (policy and reference forwards, loss, metrics into trainer._metrics["train"]) and loss.backward() gives
the gradients. The per-pair logps (not returned by _compute_loss) come from TRL's DPOTrainer.compute_ref_log_probs
run once with the policy and once with the reference (same fused head, same summing). DPOConfig: bf16=False and
fp16=False (TRL defaults to bf16!), gradient_checkpointing=False (TRL defaults to True), max_length=None (TRL
default 1024 truncates), use_cpu=True, precompute_ref_log_probs=False.

Padding: the collator puts [chosen_1..B, rejected_1..B] in one batch, RIGHT-padded, attention_mask 1 on real
tokens, no position_ids, so Llama uses positions 0..L-1 for the real tokens; with causal attention a real token
never sees a padding token, so the numbers are those of each sequence run alone (up to float rounding). The script
checks this: it recomputes every logp by running each sequence unpadded through plain transformers logits and
log_softmax, re-derives loss/metrics with the formulas above and the gradients from those unpadded forwards, and
prints the largest differences. Subtleties: (1) an empty prompt leaves the first completion token unscored
(nothing predicts position 0) while ipo still counts it in nc; (2) TRL's text pipeline would append EOS to
non-conversational completions and tokenize prompt+completion; here the ids bypass that (only the collator is used).
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import warnings

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

warnings.filterwarnings("ignore", category=FutureWarning)

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def load_tokenizer(folder):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
    # Only the constructor's dummy dataset is tokenized; the pad id never changes a result (right padding,
    # masked by the attention mask and by label -100).
    if tok.eos_token is None:
        tok.eos_token = tok.convert_ids_to_tokens(0)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(folder):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return model


def formula_loss(loss_type, beta, eps, c, r, rc, rr, nc, nr):
    """The per-loss-type formulas as written in the docstring (used only for the cross-check)."""
    delta = (c - rc) - (r - rr)
    if loss_type == "sigmoid":
        per = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        per = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        per = ((c - rc) / nc.clamp(min=1) - (r - rr) / nr.clamp(min=1) - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        per = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
    else:
        raise ValueError(loss_type)
    return per.mean()


def unpadded_logps(model, pairs, which):
    """Summed completion log-probs, one unpadded forward per sequence, plain transformers logits."""
    out = []
    for p in pairs:
        ids = torch.tensor([p["prompt"] + p[which]])
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[0, 1:, None])[:, 0]
        start = max(len(p["prompt"]), 1)
        out.append(logp[start - 1 :].sum())
    return torch.stack(out)


def run(policy_dir, reference_dir, batch_path, out_path, steps=0):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    batch = json.load(open(batch_path))
    beta = float(batch.get("beta", 0.1))
    loss_type = batch.get("loss_type", "sigmoid")
    eps = float(batch.get("label_smoothing", 0.0))
    pairs = batch["pairs"]
    if loss_type not in LOSS_TYPES:
        sys.exit(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "sigmoid" and eps != 0.0:
        print(f"note: TRL's sigmoid loss ignores label_smoothing={eps} (no cDPO in this TRL)")

    tok = load_tokenizer(policy_dir)
    policy = load_model(policy_dir)
    reference = load_model(reference_dir)
    dummy = Dataset.from_dict({"prompt": ["a"], "chosen": [" b"], "rejected": [" c"]})
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp,
            beta=beta,
            loss_type=[loss_type],
            label_smoothing=eps,
            max_length=None,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            precompute_ref_log_probs=False,
            per_device_train_batch_size=len(pairs),
            report_to="none",
            seed=0,
        )
        trainer = DPOTrainer(
            model=policy, ref_model=reference, args=args, train_dataset=dummy, processing_class=tok
        )

    examples = [{"prompt_ids": p["prompt"], "chosen_ids": p["chosen"], "rejected_ids": p["rejected"]} for p in pairs]
    inputs = trainer._prepare_inputs(trainer.data_collator(examples))
    model = trainer.model
    model.train()  # dropout is off (disable_dropout=True); "train" selects the metrics bucket
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    metrics = {k: float(v[-1]) for k, v in trainer._metrics["train"].items()}

    chosen, rejected = trainer.compute_ref_log_probs(model, inputs)
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, inputs)


    tensors = {
        "loss": loss.detach().reshape(1).float(),
        "chosen_logps": chosen.float(),
        "rejected_logps": rejected.float(),
        "ref_chosen_logps": ref_chosen.float(),
        "ref_rejected_logps": ref_rejected.float(),
    }
    for k, v in metrics.items():
        tensors[k.replace("/", ".")] = torch.tensor([v], dtype=torch.float32)
    for n, g in grads.items():
        tensors["grad." + n] = g.float()
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, out_path)

    if steps > 0:
        # DPO steps (forward, backward, AdamW) with the reference's log-probs computed once, as
        # TRL does with precompute_ref_log_probs=True (and as dreamgym always does).
        timed = dict(inputs, ref_chosen_logps=ref_chosen.detach(), ref_rejected_logps=ref_rejected.detach())
        trainer.precompute_ref_logps = True
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
        times = []
        for _ in range(steps):
            t0 = time.time()
            step_loss = trainer.compute_loss(model, timed)
            step_loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.time() - t0)
        counted = times[1:] if len(times) > 1 else times
        print(json.dumps({"dpo_step_s": sum(counted) / len(counted)}))
        trainer.precompute_ref_logps = False
        # The timing moved the weights: the cross-check below (of the values saved above) is
        # left to the untimed runs.
        return True

    # Cross-check: unpadded per-sequence forwards + the docstring formulas reproduce TRL.
    model.zero_grad(set_to_none=True)
    c = unpadded_logps(model, pairs, "chosen")
    r = unpadded_logps(model, pairs, "rejected")
    with torch.no_grad():
        rc = unpadded_logps(trainer.ref_model, pairs, "chosen")
        rr = unpadded_logps(trainer.ref_model, pairs, "rejected")
    nc = torch.tensor([float(len(p["chosen"])) for p in pairs])
    nr = torch.tensor([float(len(p["rejected"])) for p in pairs])
    my_loss = formula_loss(loss_type, beta, eps, c, r, rc, rr, nc, nr)
    my_loss.backward()
    rw_c, rw_r = beta * (c - rc).detach(), beta * (r - rr).detach()
    my_metrics = {
        "rewards/chosen": rw_c.mean().item(),
        "rewards/rejected": rw_r.mean().item(),
        "rewards/accuracies": (rw_c > rw_r).float().mean().item(),
        "rewards/margins": (rw_c - rw_r).mean().item(),
        "logps/chosen": c.mean().item(),
        "logps/rejected": r.mean().item(),
    }
    logp_diff = max(
        (a - b.detach()).abs().max().item()
        for a, b in ((chosen, c), (rejected, r), (ref_chosen, rc), (ref_rejected, rr))
    )
    metric_diff = max(abs(metrics[k] - v) for k, v in my_metrics.items())
    grad_rel = max(
        ((grads[n] - p.grad).abs().max() / grads[n].abs().max().clamp_min(1e-30)).item()
        for n, p in model.named_parameters()
    )
    grad_norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))
    nonzero = sum(int(g.abs().max() > 0) for g in grads.values())

    print(f"loss_type={loss_type} beta={beta} label_smoothing={eps} pairs={len(pairs)}  (trl DPOTrainer)")
    print(f"loss = {loss.item():.8f}")
    for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
              "logps/chosen", "logps/rejected"):
        print(f"{k:20s} = {metrics[k]:.8f}")
    print(f"chosen_logps   = {[round(x, 5) for x in chosen.tolist()]}")
    print(f"rejected_logps = {[round(x, 5) for x in rejected.tolist()]}")
    print(f"grad: {nonzero}/{len(grads)} parameters non-zero, total norm {grad_norm:.6e}")
    ok = abs(loss.item() - my_loss.item()) < 1e-4 and logp_diff < 1e-3 and metric_diff < 1e-4 and grad_rel < 1e-3
    print(f"check vs unpadded forwards + formulas: |dloss|={abs(loss.item() - my_loss.item()):.2e} "
          f"max|dlogp|={logp_diff:.2e} max|dmetric|={metric_diff:.2e} grad max rel={grad_rel:.2e} "
          f"-> {'OK' if ok else 'MISMATCH'}")
    print(f"wrote {out_path} ({len(tensors)} tensors)")
    return ok and nonzero == len(grads)


def tiny_llama(folder, seed, perturb_from=None):
    """Like tiny_model() in bench/lm_parity.py; with perturb_from, a noisy copy of that model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = [
        f"objects: red cube ({i}, {-i}); blue ball ({2 * i}, 3)\ninstruction: push the red cube "
        f"{i} cm to the left\naction: push red cube left {i} cm"
        for i in range(200)
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|bos|>", "<|eos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
    )
    model = LlamaForCausalLM(config).float()
    with torch.no_grad():
        if perturb_from is None:
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.08)
                else:
                    p.uniform_(0.5, 1.5)
        else:
            model.load_state_dict(perturb_from.state_dict())
            for p in model.parameters():
                p.add_(torch.randn_like(p) * (0.02 if p.dim() == 2 else 0.05))
    model.save_pretrained(folder, safe_serialization=True)
    return model, tok.get_vocab_size()


def selftest():
    root = "/tmp/dpo_trl_selftest"
    policy_dir, ref_dir = os.path.join(root, "policy"), os.path.join(root, "reference")
    policy, vocab = tiny_llama(policy_dir, seed=0)
    tiny_llama(ref_dir, seed=1, perturb_from=policy)
    g = torch.Generator().manual_seed(7)

    def ids(n):
        return torch.randint(2, vocab, (n,), generator=g).tolist()

    # prompt / chosen / rejected lengths differ, so the collator pads both halves
    pairs = [
        {"prompt": ids(5), "chosen": ids(7), "rejected": ids(3)},
        {"prompt": ids(9), "chosen": ids(2), "rejected": ids(6)},
        {"prompt": ids(3), "chosen": ids(11), "rejected": ids(8)},
    ]
    all_ok = True
    for lt in LOSS_TYPES:
        eps = 0.1 if lt == "robust" else 0.0
        batch_path = os.path.join(root, f"batch_{lt}.json")
        out_path = os.path.join(root, f"out_{lt}.safetensors")
        json.dump({"beta": 0.1, "loss_type": lt, "label_smoothing": eps, "pairs": pairs}, open(batch_path, "w"))
        cmd = [sys.executable, os.path.abspath(__file__), policy_dir, ref_dir, batch_path, out_path]
        print("$ " + " ".join(cmd), flush=True)
        res = subprocess.run(cmd)
        all_ok &= res.returncode == 0
    print("SELFTEST OK" if all_ok else "SELFTEST FAILED")
    return all_ok


if __name__ == "__main__":
    if sys.argv[1:] == ["--selftest"]:
        sys.exit(0 if selftest() else 1)
    if len(sys.argv) not in (5, 6):
        sys.exit("usage: dpo_trl_reference.py <policy_dir> <reference_dir> <batch.json> <out.safetensors> [steps]"
                 " | --selftest")
    steps = int(sys.argv[5]) if len(sys.argv) == 6 else 0
    sys.exit(0 if run(*sys.argv[1:5], steps=steps) else 1)
