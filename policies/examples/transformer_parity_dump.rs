//! Writes a Decision Transformer and a small language model with their inputs, outputs, losses
//! and every parameter's gradient, for `bench/transformer_parity.py` to compare with PyTorch:
//!
//!     cargo run --release -p dreamgym-policies --example transformer_parity_dump -- /tmp/tparity
//!     bench-venv/bin/python bench/transformer_parity.py /tmp/tparity

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use dreamgym_nn::{Gpt, GptConfig, MlpKind, NormKind, ParamInit, PositionKind, TransformerConfig};
use dreamgym_policies::{
    DecisionTransformer, DecisionTransformerConfig, DtAction, DtBatch, DtSpec,
};

fn rand(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

/// Every parameter, and its gradient as `grad.<name>`.
fn dump(
    dir: &Path,
    name: &str,
    varmap: &VarMap,
    loss: &Tensor,
    mut io: HashMap<String, Tensor>,
    config: serde_json::Value,
) -> anyhow::Result<()> {
    let grads = loss.backward()?;
    let mut weights = HashMap::new();
    for (n, var) in varmap.data().lock().expect("lock").iter() {
        weights.insert(n.clone(), var.as_tensor().clone());
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no gradient for {n}"))?;
        io.insert(format!("grad.{n}"), g.clone());
    }
    io.insert("loss".into(), loss.reshape(1)?);
    candle_core::safetensors::save(&weights, dir.join(format!("{name}.safetensors")))?;
    candle_core::safetensors::save(&io, dir.join(format!("{name}_io.safetensors")))?;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&config)?,
    )?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or("tparity".into()));
    std::fs::create_dir_all(&dir)?;
    let dev = Device::Cpu;

    // The Decision Transformer: GPT-2 choices, Box actions.
    let config = DecisionTransformerConfig {
        transformer: TransformerConfig {
            n_layer: 2,
            n_embd: 32,
            n_head: 4,
            block_size: 15,
            positions: PositionKind::None,
            dropout: 0.0,
            ..TransformerConfig::default()
        },
        context: 5,
        max_timestep: 64,
        return_scale: 10.0,
        condition_on_return: true,
        conv: None,
    };
    let spec = DtSpec {
        obs_mean: vec![0.0; 6],
        obs_std: vec![1.0; 6],
        action: DtAction::Box {
            low: vec![-1.0; 3],
            high: vec![1.0; 3],
        },
        image: None,
    };
    let dt = DecisionTransformer::new(&config, spec, &dev, 11)?;
    let (b, k) = (3, 5);
    let batch = DtBatch {
        returns: rand(&[b, k, 1], 1, 2.0),
        obs: rand(&[b, k, 6], 2, 1.5),
        actions: rand(&[b, k, 3], 3, 1.0),
        timesteps: Tensor::from_vec(
            (0..b * k)
                .map(|i| (i * 7 % 60) as u32)
                .collect::<Vec<u32>>(),
            (b, k),
            &dev,
        )?,
    };
    let pred = dt.forward(&batch, None)?;
    let loss = dt.loss(&batch, None)?;
    let io: HashMap<String, Tensor> = [
        ("returns", batch.returns.clone()),
        ("obs", batch.obs.clone()),
        ("actions", batch.actions.clone()),
        ("timesteps", batch.timesteps.to_dtype(DType::I64)?),
        ("pred", pred),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    dump(
        &dir,
        "dt",
        dt.varmap(),
        &loss,
        io,
        serde_json::to_value(&config)?,
    )?;

    // A language model: Llama choices (RMSNorm, rotary, SwiGLU, grouped-query, tied).
    let lm = GptConfig {
        transformer: TransformerConfig {
            n_layer: 2,
            n_embd: 32,
            n_head: 4,
            n_kv_head: 2,
            block_size: 16,
            norm: NormKind::RmsNorm,
            positions: PositionKind::Rotary,
            mlp: MlpKind::SwiGlu,
            mlp_hidden: 48,
            bias: false,
            dropout: 0.0,
            ..TransformerConfig::default()
        },
        vocab_size: 50,
        tie_embeddings: true,
    };
    let varmap = VarMap::new();
    let mut init = ParamInit::new(&varmap, &dev, 12);
    let gpt = Gpt::new(&mut init, &lm, &dev)?;
    let ids: Vec<u32> = (0..2 * 12).map(|i| (i * 13 % 50) as u32).collect();
    let ids = Tensor::from_vec(ids, (2, 12), &dev)?;
    let logits = gpt.forward(&ids, None, None)?;
    // Next-token cross-entropy.
    let inputs = logits.narrow(1, 0, 11)?.reshape((22, 50))?;
    let targets = ids.narrow(1, 1, 11)?.reshape(22)?;
    let loss = candle_nn::loss::cross_entropy(&inputs, &targets)?;
    let io: HashMap<String, Tensor> = [
        ("ids".to_string(), ids.to_dtype(DType::I64)?),
        ("logits".to_string(), logits),
    ]
    .into_iter()
    .collect();
    dump(&dir, "lm", &varmap, &loss, io, serde_json::to_value(&lm)?)?;
    println!("wrote {}", dir.display());
    Ok(())
}
