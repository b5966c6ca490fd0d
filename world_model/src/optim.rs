//! Adam (PyTorch's `torch.optim.Adam`, no weight decay) with optional gradient clipping by value,
//! as one fused in-place pass per parameter on the CPU.
//!
//! candle's `AdamW` runs a dozen tensor ops per parameter, each allocating a parameter-sized
//! buffer: on V's 4.3M parameters that was a large share of a training step. Other devices use
//! candle's `AdamW` (weight decay 0) after clipping.

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

/// Adam's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Clip every gradient element to `[-c, c]` first (the World Models RNN uses 1.0).
    pub clip_value: Option<f64>,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_value: None,
        }
    }
}

struct Update<'a> {
    moments: &'a Mutex<(Vec<f32>, Vec<f32>)>,
    lr_t: f32,
    b1: f32,
    b2: f32,
    eps_t: f32,
    clip: f32,
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "dreamgym-adam"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("adam: only f32 parameters are supported");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adam: parameter and gradient must be contiguous");
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut guard = self.moments.lock().unwrap();
        let (m, v) = &mut *guard;
        if m.len() != p.len() || g.len() != p.len() {
            candle_core::bail!(
                "adam: gradient of {} values for a parameter of {}",
                g.len(),
                p.len()
            );
        }
        let (b1, b2, clip) = (self.b1, self.b2, self.clip);
        for i in 0..p.len() {
            let gi = g[i].clamp(-clip, clip);
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            p[i] -= self.lr_t * m[i] / (v[i].sqrt() + self.eps_t);
        }
        Ok(())
    }
}

/// Adam over a fixed, ordered list of variables.
pub struct Adam {
    vars: Vec<Var>,
    moments: Vec<Mutex<(Vec<f32>, Vec<f32>)>>,
    config: AdamConfig,
    step: u64,
    fallback: Option<AdamW>,
}

impl Adam {
    /// Adam over `vars`.
    pub fn new(vars: Vec<Var>, config: AdamConfig) -> Result<Self> {
        let on_cpu = vars.iter().all(|v| v.device().is_cpu());
        let fallback = if on_cpu {
            None
        } else {
            Some(AdamW::new(
                vars.clone(),
                ParamsAdamW {
                    lr: config.lr,
                    beta1: config.beta1,
                    beta2: config.beta2,
                    eps: config.eps,
                    weight_decay: 0.0,
                },
            )?)
        };
        let moments = vars
            .iter()
            .map(|v| Mutex::new((vec![0.0; v.elem_count()], vec![0.0; v.elem_count()])))
            .collect();
        Ok(Self {
            vars,
            moments,
            config,
            step: 0,
            fallback,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Sets the learning rate (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
        if let Some(f) = &mut self.fallback {
            f.set_learning_rate(lr);
        }
    }

    /// One update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, mut grads: GradStore) -> Result<()> {
        self.step += 1;
        let c = self.config;
        if let Some(f) = &mut self.fallback {
            if let Some(limit) = c.clip_value {
                for v in &self.vars {
                    if let Some(g) = grads.remove(v.as_tensor()) {
                        grads.insert(v.as_tensor(), g.clamp(-limit, limit)?);
                    }
                }
            }
            return f.step(&grads);
        }
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        // p -= lr * (m / bc1) / (sqrt(v / bc2) + eps) == lr_t * m / (sqrt(v) + eps_t)
        let lr_t = (c.lr * bc2.sqrt() / bc1) as f32;
        let eps_t = (c.eps * bc2.sqrt()) as f32;
        for (var, moments) in self.vars.iter().zip(&self.moments) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let update = Update {
                moments,
                lr_t,
                b1: c.beta1 as f32,
                b2: c.beta2 as f32,
                eps_t,
                clip: c.clip_value.map(|x| x as f32).unwrap_or(f32::INFINITY),
            };
            var.as_tensor().inplace_op2(&g.contiguous()?, &update)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candle_adamw_without_weight_decay_and_clips() {
        let init = Tensor::new(&[0.5f32, -1.0, 2.0, 0.0], &Device::Cpu).unwrap();
        let target = Tensor::new(&[1.0f32, 1.0, -1.0, 3.0], &Device::Cpu).unwrap();
        let (a, b) = (
            Var::from_tensor(&init).unwrap(),
            Var::from_tensor(&init).unwrap(),
        );
        let mut ours = Adam::new(
            vec![a.clone()],
            AdamConfig {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let mut theirs = AdamW::new(
            vec![b.clone()],
            ParamsAdamW {
                lr: 0.1,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        for _ in 0..5 {
            let ga = (a.as_tensor() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            ours.step(ga).unwrap();
            let gb = (b.as_tensor() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            theirs.step(&gb).unwrap();
        }
        let (x, y): (Vec<f32>, Vec<f32>) = (a.to_vec1().unwrap(), b.to_vec1().unwrap());
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() < 1e-5, "{x:?} vs {y:?}");
        }
        // With clipping at 0 nothing moves.
        let c = Var::from_tensor(&init).unwrap();
        let mut clipped = Adam::new(
            vec![c.clone()],
            AdamConfig {
                lr: 0.1,
                clip_value: Some(0.0),
                ..Default::default()
            },
        )
        .unwrap();
        let g = (c.as_tensor() - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        clipped.step(g).unwrap();
        assert_eq!(c.to_vec1::<f32>().unwrap(), init.to_vec1::<f32>().unwrap());
    }
}
