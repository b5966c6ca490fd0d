"""The language model beside Hugging Face `transformers`, in one run on one machine.

1. A tiny random LlamaForCausalLM (grouped-query attention, untied head) and a byte-level BPE
   tokenizer, saved with save_pretrained: dreamgym loads the folder and must give the same
   token ids, logits and gradients of the next-token loss (relative error about 1e-5).
2. SmolLM2-135M-Instruct from its GGUF file (scripts/fetch-smollm2.sh), dequantized by
   transformers' own GGUF loader and by dreamgym's: the same logits (about 1e-4).
3. Speed for SmolLM2-135M in f32 on the same threads: greedy generation tokens/s with the KV
   cache, and SFT training tokens/s (forward, backward, AdamW), dreamgym beside PyTorch.

    pip install torch transformers accelerate gguf tokenizers safetensors
    cargo build --release -p dreamgym-policies --example lm_bench
    python3 bench/lm_parity.py [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf] [--threads 2]

Prints PARITY OK when every comparison is inside its tolerance (and exits 1 otherwise).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "examples", "lm_bench")


def rust(*args, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([BIN, *map(str, args)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"lm_bench {' '.join(map(str, args))} failed:\n{out.stderr}")
    return out.stdout


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def tiny_model(tmp):
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
        vocab_size=400,
        special_tokens=["<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    folder = os.path.join(tmp, "tiny-llama")
    os.makedirs(folder)
    tok.save(os.path.join(folder, "tokenizer.json"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
    )
    model = LlamaForCausalLM(config).float()
    # The default init is small; wider weights make the comparison stricter.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
            else:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(folder, safe_serialization=True)
    return folder, tok, model, texts


def parity_tiny(tmp, threads):
    folder, tok, model, texts = tiny_model(tmp)
    ok = True
    sample = texts[17]
    ours = json.loads(rust("tokenize", folder, sample, threads=threads))
    theirs = tok.encode(sample).ids
    print(f"tiny llama: token ids equal: {ours == theirs}")
    ok &= ours == theirs

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, tok.get_vocab_size(), (3, 40), generator=g)
    save_file({"ids": ids.to(torch.int64)}, os.path.join(tmp, "ids.safetensors"))
    rust("logits", folder, os.path.join(tmp, "ids.safetensors"), os.path.join(tmp, "out.safetensors"), "--grads", threads=threads)
    got = load_file(os.path.join(tmp, "out.safetensors"))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    e_logits = rel(got["logits"], out.logits.detach())
    e_loss = abs(got["loss"].item() - out.loss.item()) / abs(out.loss.item())
    e_grad = 0.0
    worst = ""
    for name, p in model.named_parameters():
        e = rel(got[f"grad.{name}"], p.grad)
        if e > e_grad:
            e_grad, worst = e, name
    print(f"tiny llama: logits rel err {e_logits:.2e}, loss rel err {e_loss:.2e}, "
          f"worst gradient rel err {e_grad:.2e} ({worst})")
    ok &= e_logits < 1e-5 and e_loss < 1e-5 and e_grad < 1e-4
    return ok


def parity_gguf(tmp, gguf, threads):
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(gguf)), gguf_file=os.path.basename(gguf), dtype=torch.float32
    )
    model.eval()
    print(f"smollm2: transformers loaded and dequantized the GGUF in {time.time() - t0:.1f} s")
    text = ("<|im_start|>user\nobjects: red cube (12, -3); blue ball (-20, 4)\n"
            "instruction: push the red cube into the blue zone<|im_end|>\n<|im_start|>assistant\n")
    ids = json.loads(rust("tokenize", gguf, text, threads=threads))
    x = torch.tensor([ids], dtype=torch.int64)
    save_file({"ids": x}, os.path.join(tmp, "sids.safetensors"))
    rust("logits", gguf, os.path.join(tmp, "sids.safetensors"), os.path.join(tmp, "sout.safetensors"), threads=threads)
    got = load_file(os.path.join(tmp, "sout.safetensors"))
    with torch.no_grad():
        theirs = model(input_ids=x).logits
    e = rel(got["logits"], theirs)
    same_top = (got["logits"].argmax(-1) == theirs.argmax(-1)).float().mean().item()
    print(f"smollm2 (GGUF): {len(ids)} tokens, logits rel err {e:.2e}, same top token at "
          f"{100 * same_top:.0f}% of positions")
    return e < 1e-4, model


def torch_speed(model, prompt, new, batch, length, steps):
    v = model.config.vocab_size
    ids = (torch.arange(prompt) * 2654435761 % (v - 2) + 1).unsqueeze(0)
    with torch.no_grad():
        # One warm-up, then the median of three (as lm_bench times dreamgym's prefill).
        prefills = []
        for run in range(4):
            t0 = time.time()
            out = model(input_ids=ids, use_cache=True)
            if run > 0:
                prefills.append(time.time() - t0)
        prefill = sorted(prefills)[1]
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t1 = time.time()
        for _ in range(new):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        decode = time.time() - t1
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    rows = (torch.arange(batch * (length + 1)) * 7 + 3) * 2654435761 % (v - 2) + 1
    rows = rows.view(batch, length + 1)
    times = []
    for _ in range(steps):
        t = time.time()
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.time() - t)
    counted = times[1:] if len(times) > 1 else times
    train = sum(counted) / len(counted)
    return {
        "prefill_tokens_per_s": prompt / prefill,
        "generate_tokens_per_s": new / decode,
        "train_tokens_per_s": batch * length / train,
        "train_step_s": train,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release -p dreamgym-policies --example lm_bench")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        ok &= parity_tiny(tmp, a.threads)
        if os.path.exists(a.gguf):
            good, model = parity_gguf(tmp, a.gguf, a.threads)
            ok &= good
            shape = (a.prompt, a.new, a.batch, a.length, a.steps)
            ours = json.loads(rust("speed", a.gguf, *shape, threads=a.threads))
            theirs = torch_speed(model, *shape)
            print(f"\nSmolLM2-135M f32, {a.threads} threads: prompt {a.prompt}, {a.new} new tokens; "
                  f"training batch {a.batch} x {a.length}")
            print("| | dreamgym | PyTorch | ratio |")
            print("|---|---|---|---|")
            for k in ("prefill_tokens_per_s", "generate_tokens_per_s", "train_tokens_per_s"):
                print(f"| {k} | {ours[k]:.1f} | {theirs[k]:.1f} | {ours[k] / theirs[k]:.2f}x |")
        else:
            print(f"no {a.gguf}: the SmolLM2 comparison is skipped (scripts/fetch-smollm2.sh)")
    print("PARITY OK" if ok else "PARITY FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
