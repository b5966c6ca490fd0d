//! The language model beside Hugging Face `transformers` (driven by `bench/lm_parity.py`):
//!
//!     lm_bench logits <model> <ids.safetensors> <out.safetensors> [--grads]
//!         logits [B, T, V] of the token ids `ids` [B, T] (i64), the mean next-token
//!         cross-entropy over every position, and with --grads every parameter's gradient
//!         (`grad.<Hugging Face name>`);
//!     lm_bench tokenize <model> <text>
//!         the token ids of a text, as JSON;
//!     lm_bench speed <model> <prompt tokens> <new tokens> <batch> <length> <steps>
//!         greedy generation with the KV cache (tokens/s after the prompt) and SFT training
//!         steps (forward, backward, AdamW) on random ids (tokens/s), as JSON;
//!     lm_bench dpo <model> <reference model> <batch.json> <out.safetensors> [steps]
//!         the preference loss of a batch of pairs (bench/dpo_trl_reference.py's format:
//!         beta, loss_type, label_smoothing, pairs of prompt / chosen / rejected ids), its
//!         log-probs, TRL's metrics (`rewards.chosen`, ...) and every parameter's gradient
//!         (`grad.<Hugging Face name>`); with `steps`, also that many timed DPO steps
//!         (forward, backward, AdamW; the reference's log-probs once), as JSON.
//!
//! `<model>` is a `.gguf` file or a folder with config.json, model.safetensors and
//! tokenizer.json. Threads: candle's CPU kernels use `RAYON_NUM_THREADS`.

// The allocator and settings of the `dreamgym` binary (src/main.rs), so that the bench
// measures what `dreamgym run` does: freed buffers stay mapped, and the next training step
// reuses them instead of faulting in fresh zeroed pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (as in src/main.rs).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use candle_core::{D, Device, Tensor};
use dreamgym_nn::{Adam, AdamConfig, KvCache, sorted_vars};
use dreamgym_policies::language::{
    LanguageModel, PreferenceLoss, PreferenceLossKind, PreferencePair, load_pretrained, pair_logps,
    preference_loss, reference_logps,
};

/// The mean next-token cross-entropy of `ids` `[B, T]` (one forward pass, on `T - 1`
/// positions, as Hugging Face's `labels = ids` computes it).
fn next_token_loss(model: &LanguageModel, ids: &Tensor) -> anyhow::Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let inputs = ids.narrow(1, 0, t - 1)?;
    let targets = ids.narrow(1, 1, t - 1)?;
    let mask = Tensor::ones((b, t - 1), candle_core::DType::F32, ids.device())?;
    Ok(model.masked_loss(&inputs, &targets, &mask, None)?)
}

/// Every parameter's gradient of `loss`, as `grad.<Hugging Face name>`.
fn insert_grads(
    model: &LanguageModel,
    loss: &Tensor,
    out_map: &mut HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    let g = loss.backward()?;
    for (name, var) in sorted_vars(model.varmap()) {
        let grad = g
            .get(var.as_tensor())
            .with_context(|| format!("no gradient for {name}"))?;
        out_map.insert(format!("grad.{name}"), grad.clone());
    }
    Ok(())
}

fn logits(model: &LanguageModel, ids_path: &Path, out: &Path, grads: bool) -> anyhow::Result<()> {
    let io = candle_core::safetensors::load(ids_path, &Device::Cpu)?;
    let ids = io
        .get("ids")
        .context("the ids file has no `ids` tensor")?
        .to_dtype(candle_core::DType::U32)?;
    let logits = model.forward(&ids, None, None)?;
    let loss = next_token_loss(model, &ids)?;
    let mut out_map: HashMap<String, Tensor> = HashMap::new();
    out_map.insert("logits".into(), logits);
    out_map.insert("loss".into(), loss.reshape(1)?);
    if grads {
        insert_grads(model, &loss, &mut out_map)?;
    }
    candle_core::safetensors::save(&out_map, out)?;
    Ok(())
}

/// A batch of preference pairs as bench/dpo_trl_reference.py reads it.
#[derive(serde::Deserialize)]
struct DpoBatch {
    beta: f64,
    loss_type: PreferenceLossKind,
    #[serde(default)]
    label_smoothing: f64,
    pairs: Vec<PreferencePair>,
}

fn dpo(
    model: &LanguageModel,
    reference: &LanguageModel,
    batch: &Path,
    out: &Path,
    steps: usize,
) -> anyhow::Result<()> {
    let batch: DpoBatch = serde_json::from_str(
        &std::fs::read_to_string(batch)
            .with_context(|| format!("cannot read {}", batch.display()))?,
    )?;
    let loss = PreferenceLoss {
        kind: batch.loss_type,
        beta: batch.beta,
        label_smoothing: batch.label_smoothing,
        rpo_alpha: 0.0,
    };
    let pairs = &batch.pairs;
    let refs = reference_logps(reference, pairs)?;
    let (chosen, rejected) = pair_logps(model, pairs)?;
    let (value, metrics) = preference_loss(model, pairs, &refs, &loss)?;
    let mut out_map: HashMap<String, Tensor> = HashMap::new();
    let dev = model.device();
    let scalar = |x: f64| Tensor::new(&[x as f32], dev);
    out_map.insert("loss".into(), value.reshape(1)?);
    out_map.insert("chosen_logps".into(), chosen);
    out_map.insert("rejected_logps".into(), rejected);
    let (rc, rr): (Vec<f32>, Vec<f32>) = refs.iter().copied().unzip();
    out_map.insert("ref_chosen_logps".into(), Tensor::new(rc, dev)?);
    out_map.insert("ref_rejected_logps".into(), Tensor::new(rr, dev)?);
    for (name, v) in metrics.named() {
        out_map.insert(name.replace('/', "."), scalar(v)?);
    }
    insert_grads(model, &value, &mut out_map)?;
    candle_core::safetensors::save(&out_map, out)?;
    if steps > 0 {
        let mut opt = Adam::new(
            sorted_vars(model.varmap()),
            AdamConfig {
                lr: 1e-6,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let mut times = Vec::new();
        for _ in 0..steps {
            let t = Instant::now();
            dreamgym_nn::on_workers(|| -> anyhow::Result<()> {
                let (value, _) = preference_loss(model, pairs, &refs, &loss)?;
                opt.step(value.backward()?)?;
                Ok(())
            })?;
            times.push(t.elapsed().as_secs_f64());
        }
        let counted = if times.len() > 1 {
            &times[1..]
        } else {
            &times[..]
        };
        let step = counted.iter().sum::<f64>() / counted.len() as f64;
        println!("{}", serde_json::json!({ "dpo_step_s": step }));
    }
    Ok(())
}

fn speed(model: &LanguageModel, args: &[usize]) -> anyhow::Result<()> {
    let [prompt, new, batch, length, steps] = args else {
        anyhow::bail!("speed takes: prompt tokens, new tokens, batch, length, steps");
    };
    let v = model.config().vocab_size as u32;
    let dev = model.device().clone();
    // Fixed pseudo-random ids (the same recipe in bench/lm_parity.py is not needed: the cost
    // does not depend on which tokens they are).
    let id = |i: usize| ((i as u64 * 2_654_435_761) % (v as u64 - 2)) as u32 + 1;

    // Generation: prefill (one warm-up, then the median of three, as bench/lm_parity.py times
    // PyTorch), then one token at a time with the cache (greedy, no early stop).
    let ids: Vec<u32> = (0..*prompt).map(id).collect();
    let x = Tensor::from_vec(ids, (1, *prompt), &dev)?;
    let mut prefills = Vec::new();
    let (mut cache, mut last) = (KvCache::new(), None);
    for run in 0..4 {
        cache = KvCache::new();
        let t0 = Instant::now();
        // On rayon's workers, as `LanguageModel::generate` runs.
        last = Some(dreamgym_nn::on_workers(|| {
            model.forward(&x, Some(&mut cache), None)
        })?);
        if run > 0 {
            prefills.push(t0.elapsed().as_secs_f64());
        }
    }
    prefills.sort_by(f64::total_cmp);
    let prefill = prefills[1];
    let mut last = last.context("no prefill ran")?;
    let t1 = Instant::now();
    for _ in 0..*new {
        let next = last
            .narrow(1, last.dim(1)? - 1, 1)?
            .squeeze(1)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?[0];
        let x = Tensor::from_vec(vec![next], (1, 1), &dev)?;
        last = dreamgym_nn::on_workers(|| model.forward(&x, Some(&mut cache), None))?;
    }
    let decode = t1.elapsed().as_secs_f64();

    // Training: forward, backward and an AdamW step on `batch` rows of `length` tokens.
    let mut opt = Adam::new(
        sorted_vars(model.varmap()),
        AdamConfig {
            lr: 1e-5,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let rows: Vec<u32> = (0..batch * (length + 1)).map(|i| id(i * 7 + 3)).collect();
    let ids = Tensor::from_vec(rows, (*batch, length + 1), &dev)?;
    let mut times = Vec::new();
    for _ in 0..*steps {
        let t = Instant::now();
        // On rayon's workers, as dreamgym's training loops run it.
        dreamgym_nn::on_workers(|| -> anyhow::Result<()> {
            let loss = next_token_loss(model, &ids)?;
            opt.step(loss.backward()?)?;
            Ok(())
        })?;
        times.push(t.elapsed().as_secs_f64());
    }
    // The first step warms allocations up; it is left out when there are more.
    let counted = if times.len() > 1 {
        &times[1..]
    } else {
        &times[..]
    };
    let train = counted.iter().sum::<f64>() / counted.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "prefill_tokens_per_s": *prompt as f64 / prefill,
            "generate_tokens_per_s": *new as f64 / decode,
            "train_tokens_per_s": (batch * length) as f64 / train,
            "train_step_s": train,
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // SAFETY: a plain option setter, called before any allocation on another thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: lm_bench logits|tokenize|speed|dpo <model> ...";
    let (cmd, model_path) = match (args.first(), args.get(1)) {
        (Some(c), Some(m)) => (c.as_str(), Path::new(m)),
        _ => anyhow::bail!(usage),
    };
    let model = load_pretrained(model_path, &Device::Cpu)?;
    match cmd {
        "logits" => {
            let (ids, out) = match (args.get(2), args.get(3)) {
                (Some(i), Some(o)) => (Path::new(i), Path::new(o)),
                _ => anyhow::bail!(usage),
            };
            logits(&model, ids, out, args.iter().any(|a| a == "--grads"))
        }
        "tokenize" => {
            let text = args.get(2).context(usage)?;
            println!(
                "{}",
                serde_json::to_string(&model.tokenizer().encode(text)?)?
            );
            Ok(())
        }
        "dpo" => {
            let (reference, batch, out) = match (args.get(2), args.get(3), args.get(4)) {
                (Some(r), Some(b), Some(o)) => (Path::new(r), Path::new(b), Path::new(o)),
                _ => anyhow::bail!(usage),
            };
            let steps = match args.get(5) {
                Some(s) => s.parse::<usize>().context("steps is a whole number")?,
                None => 0,
            };
            let reference = load_pretrained(reference, &Device::Cpu)?;
            dpo(&model, &reference, batch, out, steps)
        }
        "speed" => {
            let nums = args[2..]
                .iter()
                .map(|a| a.parse::<usize>().context("speed takes whole numbers"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            speed(&model, &nums)
        }
        _ => anyhow::bail!(usage),
    }
}
