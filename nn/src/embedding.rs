//! Token (or timestep) embeddings: a lookup table whose rows receive gradients.

use candle_core::{Result, Tensor};

use crate::ParamInit;

/// A table `[vocab, dim]`; `forward` maps integer ids of any shape `[..]` to `[.., dim]`.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// `[vocab, dim]` (PyTorch's `nn.Embedding.weight`).
    pub weight: Tensor,
    dim: usize,
}

impl Embedding {
    /// A new table named `name.weight`, drawn from `N(0, std²)` (GPT-2 uses 0.02; PyTorch's
    /// default is 1).
    pub fn new(
        init: &mut ParamInit,
        name: &str,
        vocab: usize,
        dim: usize,
        std: f32,
    ) -> Result<Self> {
        Ok(Self {
            weight: init.normal(&format!("{name}.weight"), &[vocab, dim], std)?,
            dim,
        })
    }

    /// Wraps an existing table (for weight tying).
    pub fn from_weight(weight: Tensor) -> Result<Self> {
        let (_, dim) = weight.dims2()?;
        Ok(Self { weight, dim })
    }

    /// Rows of the table for `ids` (u32 or i64). Out-of-range ids are an error, not a panic.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let vocab = self.weight.dim(0)?;
        let flat = ids.flatten_all()?.to_dtype(candle_core::DType::U32)?;
        if let Some(bad) = flat
            .to_vec1::<u32>()?
            .into_iter()
            .find(|i| *i as usize >= vocab)
        {
            candle_core::bail!("embedding: id {bad} is outside the table of {vocab} rows");
        }
        let mut shape = ids.dims().to_vec();
        shape.push(self.dim);
        self.weight.index_select(&flat, 0)?.reshape(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn looks_up_rows_and_sends_gradients_to_them() {
        let varmap = VarMap::new();
        let mut init = ParamInit::new(&varmap, &Device::Cpu, 3);
        let e = Embedding::new(&mut init, "wte", 5, 4, 1.0).unwrap();
        let ids = Tensor::new(&[[1u32, 3], [3, 0]], &Device::Cpu).unwrap();
        let y = e.forward(&ids).unwrap();
        assert_eq!(y.dims(), &[2, 2, 4]);
        let row3: Vec<f32> = e.weight.get(3).unwrap().to_vec1().unwrap();
        assert_eq!(
            y.get(0).unwrap().get(1).unwrap().to_vec1::<f32>().unwrap(),
            row3
        );
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g: Vec<Vec<f32>> = grads.get(&e.weight).unwrap().to_vec2().unwrap();
        // Row 3 was used twice, rows 1 and 0 once, rows 2 and 4 never.
        assert_eq!(g[3], vec![2.0; 4]);
        assert_eq!(g[1], vec![1.0; 4]);
        assert_eq!(g[2], vec![0.0; 4]);
        let bad = Tensor::new(&[7u32], &Device::Cpu).unwrap();
        assert!(e.forward(&bad).unwrap_err().to_string().contains("outside"));
        assert_eq!(y.dtype(), DType::F32);
    }
}
