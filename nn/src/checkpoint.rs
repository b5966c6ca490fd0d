//! Checkpoints: `<stem>.safetensors` (every parameter, names sorted so the bytes do not depend
//! on hash-map order), optionally `<stem>.optimizer.safetensors` (the optimiser's moments, for
//! exact resumption), and `<stem>.json`, a sidecar with the model's kind and config, CRC-32s of
//! the tensor files and free-form training state. The tensor files are written first and the
//! sidecar last, each atomically, so a sidecar always describes complete files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Serialize, de::DeserializeOwned};

use crate::{Adam, NnError};

/// What a checkpoint's JSON sidecar holds next to the model's config.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sidecar<C> {
    kind: String,
    config: C,
    /// CRC-32 of the safetensors file, to tell a damaged file from a mismatched one.
    crc32: u32,
    /// CRC-32 of the optimiser's file, when one was saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    optimizer_crc32: Option<u32>,
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

fn optimizer_path(stem: &Path) -> PathBuf {
    stem.with_extension("optimizer.safetensors")
}

fn lock(
    varmap: &VarMap,
) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, Var>>, NnError> {
    varmap
        .data()
        .lock()
        .map_err(|_| NnError::Config("the parameter map's lock is poisoned".into()))
}

/// Serialises named tensors as safetensors, names sorted, f32 little-endian.
pub fn tensors_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>, NnError> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut payload: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.dims(), "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
        payload.extend_from_slice(&bytes);
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| NnError::Checkpoint(format!("cannot encode the header: {e}")))?;
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + payload.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Serialises every variable of `varmap` with sorted names (so the bytes do not depend on
/// hash-map order).
pub fn safetensors_bytes(varmap: &VarMap) -> Result<Vec<u8>, NnError> {
    let tensors: BTreeMap<String, Tensor> = lock(varmap)?
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    tensors_bytes(&tensors)
}

/// Saves `varmap` and `config` as a checkpoint at `stem`, with the optimiser's moments when
/// `optimizer` is given (so that training resumes exactly where it stopped).
pub fn save_checkpoint<C: Serialize>(
    stem: &Path,
    kind: &str,
    config: &C,
    varmap: &VarMap,
    optimizer: Option<&Adam>,
    state: serde_json::Value,
) -> Result<(), NnError> {
    let (weights, meta) = checkpoint_paths(stem);
    let bytes = safetensors_bytes(varmap)?;
    let crc32 = crc32fast::hash(&bytes);
    dreamgym_base::write_atomic(&weights, &bytes)?;
    let optimizer_crc32 = match optimizer {
        Some(opt) => {
            let bytes = tensors_bytes(&opt.state_tensors()?)?;
            dreamgym_base::write_atomic(&optimizer_path(stem), &bytes)?;
            Some(crc32fast::hash(&bytes))
        }
        None => None,
    };
    let sidecar = Sidecar {
        kind: kind.to_string(),
        config,
        crc32,
        optimizer_crc32,
        state,
    };
    let json = serde_json::to_vec_pretty(&sidecar)
        .map_err(|e| NnError::Checkpoint(format!("cannot encode {kind}'s config: {e}")))?;
    dreamgym_base::write_atomic(&meta, &json)?;
    Ok(())
}

fn read_sidecar(stem: &Path) -> Result<Sidecar<serde_json::Value>, NnError> {
    let (_, meta) = checkpoint_paths(stem);
    let text = std::fs::read(&meta).map_err(|e| NnError::io("cannot read", &meta, e))?;
    serde_json::from_slice(&text).map_err(|e| {
        NnError::Checkpoint(format!("{}: not a checkpoint sidecar: {e}", meta.display()))
    })
}

/// Reads a checkpoint's config and training state, checking its kind.
pub fn read_checkpoint_meta<C: DeserializeOwned>(
    stem: &Path,
    kind: &str,
) -> Result<(C, serde_json::Value), NnError> {
    let (_, meta) = checkpoint_paths(stem);
    let sidecar = read_sidecar(stem)?;
    if sidecar.kind != kind {
        return Err(NnError::Checkpoint(format!(
            "{}: is a {} checkpoint, expected {kind}",
            meta.display(),
            sidecar.kind
        )));
    }
    let config = serde_json::from_value(sidecar.config)
        .map_err(|e| NnError::Checkpoint(format!("{}: bad {kind} config: {e}", meta.display())))?;
    Ok((config, sidecar.state))
}

/// The kind a checkpoint's sidecar names (which model it holds).
pub fn checkpoint_kind(stem: &Path) -> Result<String, NnError> {
    Ok(read_sidecar(stem)?.kind)
}

/// The CRC-32 of a checkpoint's weights as its sidecar records it: an identity for "which
/// trained model", so that what was trained on a model can tell when the model changed.
pub fn weights_crc32(stem: &Path) -> Result<u32, NnError> {
    Ok(read_sidecar(stem)?.crc32)
}

/// Reads a tensor file whose CRC-32 the sidecar recorded.
fn read_checked(path: &Path, crc32: u32, meta: &Path) -> Result<BTreeMap<String, Tensor>, NnError> {
    let bytes = std::fs::read(path).map_err(|e| NnError::io("cannot read", path, e))?;
    if crc32fast::hash(&bytes) != crc32 {
        return Err(NnError::Checkpoint(format!(
            "{}: damaged (checksum does not match {})",
            path.display(),
            meta.display()
        )));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| NnError::Checkpoint(format!("{}: {e}", path.display())))?;
    Ok(tensors.into_iter().collect())
}

/// Loads the weights at `stem` into `varmap`, whose variables must all be present with the
/// same shapes; a damaged file (CRC mismatch) or a mismatched one is an error naming the file.
pub fn load_weights(stem: &Path, varmap: &VarMap) -> Result<(), NnError> {
    let (weights, meta) = checkpoint_paths(stem);
    let sidecar = read_sidecar(stem)?;
    let tensors = read_checked(&weights, sidecar.crc32, &meta)?;
    let data = lock(varmap)?;
    for (name, var) in data.iter() {
        let t = tensors.get(name).ok_or_else(|| {
            NnError::Checkpoint(format!("{}: has no tensor {name}", weights.display()))
        })?;
        if t.dims() != var.dims() {
            return Err(NnError::Checkpoint(format!(
                "{}: {name} has shape {:?}, the model expects {:?}",
                weights.display(),
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_device(var.device())?)?;
    }
    if let Some(extra) = tensors.keys().find(|k| !data.contains_key(*k)) {
        return Err(NnError::Checkpoint(format!(
            "{}: tensor {extra} is not part of this model",
            weights.display()
        )));
    }
    Ok(())
}

/// Restores the optimiser's moments saved with the checkpoint at `stem`. Returns `false`
/// (leaving `optimizer` fresh) for a checkpoint saved without them (older runs), and an error
/// for a damaged or mismatched file.
pub fn load_optimizer(stem: &Path, optimizer: &mut Adam) -> Result<bool, NnError> {
    let (_, meta) = checkpoint_paths(stem);
    let sidecar = read_sidecar(stem)?;
    let Some(crc32) = sidecar.optimizer_crc32 else {
        return Ok(false);
    };
    let path = optimizer_path(stem);
    let tensors = read_checked(&path, crc32, &meta)?;
    optimizer
        .load_state_tensors(&tensors)
        .map_err(|e| NnError::Checkpoint(format!("{}: {e}", path.display())))?;
    Ok(true)
}

/// Every trainable variable of `varmap`, sorted by name (a fixed order for optimisers).
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let Ok(data) = lock(varmap) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Number of scalar parameters in `varmap`.
pub fn param_count(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}
