//! Parameters, layers and checkpoints shared by V and M.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Serialize, de::DeserializeOwned};

use crate::WmError;

/// Creates named parameters into a [`VarMap`], initialised from a seeded generator (candle's
/// own initialisers draw from an unseeded thread RNG), so that a seed fixes every weight.
pub struct ParamInit<'a> {
    varmap: &'a VarMap,
    device: &'a Device,
    rng: ChaCha8Rng,
}

impl<'a> ParamInit<'a> {
    /// Parameters go into `varmap`, on `device`, drawn from `seed`.
    pub fn new(varmap: &'a VarMap, device: &'a Device, seed: u64) -> Self {
        Self {
            varmap,
            device,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A parameter drawn uniformly from `[-bound, bound]` (PyTorch's default for linear and
    /// convolution layers uses `bound = 1/sqrt(fan_in)`).
    pub fn uniform(
        &mut self,
        name: &str,
        shape: &[usize],
        bound: f32,
    ) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-bound..=bound))
            .collect();
        let t = Tensor::from_vec(data, shape, self.device)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.varmap
            .data()
            .lock()
            .unwrap()
            .insert(name.to_string(), var);
        Ok(out)
    }
}

/// A dense layer `y = x W^T + b` with PyTorch's weight layout `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`
    pub weight: Tensor,
    /// `[out]`
    pub bias: Tensor,
}

impl Linear {
    /// A new layer named `name.weight` / `name.bias`, PyTorch's default initialisation.
    pub fn new(
        init: &mut ParamInit,
        name: &str,
        inp: usize,
        out: usize,
    ) -> candle_core::Result<Self> {
        let bound = 1.0 / (inp as f32).sqrt();
        Ok(Self {
            weight: init.uniform(&format!("{name}.weight"), &[out, inp], bound)?,
            bias: init.uniform(&format!("{name}.bias"), &[out], bound)?,
        })
    }

    /// Applies the layer to `[N, in]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// What a checkpoint's JSON sidecar holds next to the model's config.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sidecar<C> {
    kind: String,
    config: C,
    /// CRC-32 of the safetensors file, to tell a damaged file from a mismatched one.
    crc32: u32,
    /// Free-form training state (step, epoch, ...), kept for resuming.
    #[serde(default)]
    state: serde_json::Value,
}

/// The two files of a checkpoint: `<stem>.safetensors` and `<stem>.json`.
pub fn checkpoint_paths(stem: &Path) -> (PathBuf, PathBuf) {
    (
        stem.with_extension("safetensors"),
        stem.with_extension("json"),
    )
}

/// Serialises every variable of `varmap` with sorted names (so the bytes do not depend on
/// hash-map order).
pub fn safetensors_bytes(varmap: &VarMap) -> Result<Vec<u8>, WmError> {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let tensors: Vec<(String, Tensor)> = names
        .into_iter()
        .map(|n| (n.clone(), data[n].as_tensor().clone()))
        .collect();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut payload: Vec<u8> = Vec::new();
    for (name, t) in &tensors {
        let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.dims(), "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
        payload.extend_from_slice(&bytes);
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + payload.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Saves `varmap` and `config` as a checkpoint at `stem` (both files written atomically; the
/// weights first, so a sidecar always describes complete weights).
pub fn save_checkpoint<C: Serialize>(
    stem: &Path,
    kind: &str,
    config: &C,
    varmap: &VarMap,
    state: serde_json::Value,
) -> Result<(), WmError> {
    let (weights, meta) = checkpoint_paths(stem);
    let bytes = safetensors_bytes(varmap)?;
    let crc32 = crc32fast::hash(&bytes);
    write_atomic(&weights, &bytes).map_err(|e| WmError::io(&weights, e))?;
    let sidecar = Sidecar {
        kind: kind.to_string(),
        config,
        crc32,
        state,
    };
    let json = serde_json::to_vec_pretty(&sidecar).expect("config serialises");
    write_atomic(&meta, &json).map_err(|e| WmError::io(&meta, e))?;
    Ok(())
}

/// Reads a checkpoint's config and training state, checking its kind.
pub fn read_checkpoint_meta<C: DeserializeOwned>(
    stem: &Path,
    kind: &str,
) -> Result<(C, serde_json::Value), WmError> {
    let (_, meta) = checkpoint_paths(stem);
    let text = std::fs::read(&meta).map_err(|e| WmError::io(&meta, e))?;
    let sidecar: Sidecar<serde_json::Value> = serde_json::from_slice(&text).map_err(|e| {
        WmError::Checkpoint(format!("{}: not a checkpoint sidecar: {e}", meta.display()))
    })?;
    if sidecar.kind != kind {
        return Err(WmError::Checkpoint(format!(
            "{}: is a {} checkpoint, expected {kind}",
            meta.display(),
            sidecar.kind
        )));
    }
    let config = serde_json::from_value(sidecar.config)
        .map_err(|e| WmError::Checkpoint(format!("{}: bad {kind} config: {e}", meta.display())))?;
    Ok((config, sidecar.state))
}

/// Loads the weights at `stem` into `varmap`, whose variables must all be present with the
/// same shapes; a damaged file (CRC mismatch) or a mismatched one is an error naming the file.
pub fn load_weights(stem: &Path, varmap: &VarMap) -> Result<(), WmError> {
    let (weights, meta) = checkpoint_paths(stem);
    let text = std::fs::read(&meta).map_err(|e| WmError::io(&meta, e))?;
    let sidecar: Sidecar<serde_json::Value> = serde_json::from_slice(&text).map_err(|e| {
        WmError::Checkpoint(format!("{}: not a checkpoint sidecar: {e}", meta.display()))
    })?;
    let bytes = std::fs::read(&weights).map_err(|e| WmError::io(&weights, e))?;
    if crc32fast::hash(&bytes) != sidecar.crc32 {
        return Err(WmError::Checkpoint(format!(
            "{}: damaged (checksum does not match {})",
            weights.display(),
            meta.display()
        )));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| WmError::Checkpoint(format!("{}: {e}", weights.display())))?;
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        let t = tensors.get(name).ok_or_else(|| {
            WmError::Checkpoint(format!("{}: has no tensor {name}", weights.display()))
        })?;
        if t.dims() != var.dims() {
            return Err(WmError::Checkpoint(format!(
                "{}: {name} has shape {:?}, the model expects {:?}",
                weights.display(),
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_device(var.device())?)?;
    }
    if let Some(extra) = tensors.keys().find(|k| !data.contains_key(*k)) {
        return Err(WmError::Checkpoint(format!(
            "{}: tensor {extra} is not part of this model",
            weights.display()
        )));
    }
    Ok(())
}

/// Every trainable variable of `varmap`, sorted by name (a fixed order for optimisers).
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap();
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Clips every gradient element to `[-limit, limit]` (the World Models code's
/// `clip_by_value`; PyTorch's `clip_grad_value_`).
pub fn clip_grad_value(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[(String, Var)],
    limit: f64,
) -> candle_core::Result<()> {
    for (_, v) in vars {
        if let Some(g) = grads.remove(v.as_tensor()) {
            grads.insert(v.as_tensor(), g.clamp(-limit, limit)?);
        }
    }
    Ok(())
}

/// Number of scalar parameters in `varmap`.
pub fn param_count(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}
