//! Device selection by name.

use crate::NnError;

/// Picks the compute device by name: `cpu`, or `cuda` / `cuda:N` when built with the `cuda`
/// feature.
pub fn device(name: &str) -> Result<candle_core::Device, NnError> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = n
                .strip_prefix("cuda:")
                .map(|s| s.parse::<usize>())
                .unwrap_or(Ok(0));
            let ordinal = ordinal.map_err(|_| NnError::Config(format!("bad device {n:?}")))?;
            if !candle_core::utils::cuda_is_available() {
                return Err(NnError::Config(format!(
                    "device {n:?}: this build has no CUDA support (rebuild with `--features cuda`)"
                )));
            }
            Ok(candle_core::Device::new_cuda(ordinal)?)
        }
        other => Err(NnError::Config(format!(
            "unknown device {other:?} (expected cpu, cuda or cuda:N)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_map_to_devices_or_clear_errors() {
        assert!(super::device("cpu").unwrap().is_cpu());
        let err = super::device("tpu").unwrap_err().to_string();
        assert!(err.contains("expected cpu"), "{err}");
        assert!(super::device("cuda:x").is_err());
    }
}
