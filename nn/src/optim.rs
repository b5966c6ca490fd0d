//! Adam and AdamW (PyTorch's `torch.optim.Adam` / `AdamW`) with optional gradient clipping by
//! value or by global norm, as one fused in-place pass per parameter on the CPU.
//!
//! candle's `AdamW` runs a dozen tensor ops per parameter, each allocating a parameter-sized
//! buffer: on V's 4.3M parameters that was a large share of a training step; its moments are
//! also private, so a run could not resume exactly. Here the moments are ours: fused on the
//! CPU, plain tensor ops on other devices, and saved with checkpoints
//! ([`crate::save_checkpoint`]), so a resumed run takes the same steps as an uninterrupted one.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Device, InplaceOp2, Layout, Result, Tensor, Var};
use rayon::prelude::*;

/// Elements a thread updates at a time; a parameter under two chunks stays on the calling
/// thread. A SmolLM2 step updates 135 M elements: on one thread, that and the gradient norm
/// were a tenth of the step.
const CHUNK: usize = 1 << 16;

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
    /// Scale all gradients together so their global L2 norm is at most this (PyTorch's
    /// `clip_grad_norm_`; transformers commonly use 1.0). Applied before `clip_value`.
    pub clip_norm: Option<f64>,
    /// Decoupled weight decay (AdamW); 0 is plain Adam. Applied to every parameter given to
    /// the optimiser: leave norms and biases out by giving them to a second optimiser.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_value: None,
            clip_norm: None,
            weight_decay: 0.0,
        }
    }
}

struct Update<'a> {
    moments: &'a Mutex<(Vec<f32>, Vec<f32>)>,
    lr_t: f32,
    /// `1 - lr * weight_decay`, applied to the parameter before the Adam step.
    decay: f32,
    /// Gradient scale from global-norm clipping.
    scale: f32,
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
        let mut guard = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adam: poisoned moments".into()))?;
        let (m, v) = &mut *guard;
        if m.len() != p.len() || g.len() != p.len() {
            candle_core::bail!(
                "adam: gradient of {} values for a parameter of {}",
                g.len(),
                p.len()
            );
        }
        let c = AdamCoefs {
            b1: self.b1,
            b2: self.b2,
            clip: self.clip,
            scale: self.scale,
            decay: self.decay,
            lr_t: self.lr_t,
            eps_t: self.eps_t,
        };
        // Every element on its own: chunks on any thread give the same numbers, and each is
        // compiled for the widest vector unit (sqrt and division are exactly rounded).
        let arch = pulp::Arch::new();
        let update = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            arch.dispatch(AdamChunk { p, m, v, g, c })
        };
        if p.len() < 2 * CHUNK {
            update(p, m, v, g);
        } else {
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| update(p, m, v, g));
        }
        Ok(())
    }
}

/// Adam's update of one chunk of a parameter, as a pulp op so that its loop is compiled for
/// the vector unit `dispatch` picks: a closure there was compiled for baseline x86-64 and ran
/// scalar `sqrtss` and `divss` (pulp calls its op from three places, so LLVM did not inline
/// it).
struct AdamChunk<'a> {
    p: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    g: &'a [f32],
    c: AdamCoefs,
}

/// The coefficients of one Adam step (see [`Update`]).
#[derive(Clone, Copy)]
struct AdamCoefs {
    b1: f32,
    b2: f32,
    clip: f32,
    scale: f32,
    decay: f32,
    lr_t: f32,
    eps_t: f32,
}

impl pulp::WithSimd for AdamChunk<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Self { p, m, v, g, c } = self;
        let AdamCoefs {
            b1,
            b2,
            clip,
            scale,
            decay,
            lr_t,
            eps_t,
        } = c;
        for (((p, m), v), g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let gi = (g * scale).clamp(-clip, clip);
            *m = b1 * *m + (1.0 - b1) * gi;
            *v = b2 * *v + (1.0 - b2) * gi * gi;
            *p = *p * decay - lr_t * *m / (v.sqrt() + eps_t);
        }
    }
}

/// `Σ g²` of a CPU f32 tensor in f64: chunks of [`CHUNK`] summed on any thread (eight lanes
/// each, a fixed order), the chunk sums added in order, so the norm does not depend on the
/// number of threads. candle's `sqr().sum_all()` wrote a gradient-sized buffer and summed it
/// on one thread.
fn cpu_sum_of_squares(g: &Tensor) -> Result<f64> {
    let g = g.contiguous()?;
    let (storage, layout) = g.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("gradient norm: not a CPU tensor");
    };
    let data = crate::fused::contiguous_f32(cpu, layout, "gradient norm")?;
    let arch = pulp::Arch::new();
    let chunk_sum = |c: &[f32]| -> f64 {
        arch.dispatch(|| {
            let mut lanes = [0f64; 8];
            let mut it = c.chunks_exact(8);
            for x in &mut it {
                for (l, x) in lanes.iter_mut().zip(x) {
                    *l += f64::from(*x) * f64::from(*x);
                }
            }
            let tail: f64 = it
                .remainder()
                .iter()
                .map(|x| f64::from(*x) * f64::from(*x))
                .sum();
            lanes.iter().sum::<f64>() + tail
        })
    };
    let sums: Vec<f64> = if data.len() < 2 * CHUNK {
        data.chunks(CHUNK).map(chunk_sum).collect()
    } else {
        data.par_chunks(CHUNK).map(chunk_sum).collect()
    };
    Ok(sums.iter().sum())
}

/// One parameter's moments: host vectors updated by the fused op on the CPU, tensors on other
/// devices.
enum Moments {
    Cpu(Mutex<(Vec<f32>, Vec<f32>)>),
    Device(Tensor, Tensor),
}

/// Adam over a fixed list of named variables.
pub struct Adam {
    vars: Vec<(String, Var)>,
    moments: Vec<Moments>,
    config: AdamConfig,
    step: u64,
}

impl Adam {
    /// Adam over `vars` (give them in a fixed order, e.g. [`crate::sorted_vars`]).
    pub fn new(vars: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|(_, v)| {
                Ok(if v.device().is_cpu() {
                    Moments::Cpu(Mutex::new((
                        vec![0.0; v.elem_count()],
                        vec![0.0; v.elem_count()],
                    )))
                } else {
                    let z = v.as_tensor().zeros_like()?;
                    Moments::Device(z.clone(), z)
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            vars,
            moments,
            config,
            step: 0,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Sets the learning rate (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// The global L2 norm of the gradients of this optimiser's variables.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0.0f64;
        // On a GPU the squares add up there and one number comes back (a read per variable
        // would wait for the device once per variable).
        let mut on_device: Option<Tensor> = None;
        for (_, v) in &self.vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                if g.device().is_cpu() && g.dtype() == candle_core::DType::F32 {
                    sum += cpu_sum_of_squares(g)?;
                } else {
                    let sq = g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?;
                    on_device = Some(match on_device {
                        Some(acc) => (acc + sq)?,
                        None => sq,
                    });
                }
            }
        }
        if let Some(acc) = on_device {
            sum += acc.to_scalar::<f64>()?;
        }
        Ok(sum.sqrt())
    }

    /// One update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: GradStore) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let scale = match c.clip_norm {
            Some(max) => {
                let norm = self.grad_norm(&grads)?;
                if norm > max { max / (norm + 1e-6) } else { 1.0 }
            }
            None => 1.0,
        };
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        // p -= lr * (m / bc1) / (sqrt(v / bc2) + eps) == lr_t * m / (sqrt(v) + eps_t)
        let lr_t = c.lr * bc2.sqrt() / bc1;
        let eps_t = c.eps * bc2.sqrt();
        let decay = 1.0 - c.lr * c.weight_decay;
        let clip = c.clip_value.unwrap_or(f64::INFINITY);
        for ((_, var), moments) in self.vars.iter().zip(&mut self.moments) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            match moments {
                Moments::Cpu(m) => {
                    let update = Update {
                        moments: m,
                        lr_t: lr_t as f32,
                        decay: decay as f32,
                        scale: scale as f32,
                        b1: c.beta1 as f32,
                        b2: c.beta2 as f32,
                        eps_t: eps_t as f32,
                        clip: clip as f32,
                    };
                    var.as_tensor().inplace_op2(&g.contiguous()?, &update)?;
                }
                Moments::Device(m, v) => {
                    let mut g = (g * scale)?;
                    if clip.is_finite() {
                        g = g.clamp(-clip, clip)?;
                    }
                    *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let step = ((&*m * lr_t)? / (v.sqrt()? + eps_t)?)?;
                    let p = ((var.as_tensor() * decay)? - step)?;
                    var.set(&p)?;
                }
            }
        }
        Ok(())
    }

    /// The moments and step count as named CPU tensors (`<param>.m`, `<param>.v`, `step`).
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for ((name, var), moments) in self.vars.iter().zip(&self.moments) {
            let (m, v) = match moments {
                Moments::Cpu(mv) => {
                    let mv = mv
                        .lock()
                        .map_err(|_| candle_core::Error::Msg("adam: poisoned moments".into()))?;
                    (
                        Tensor::from_slice(&mv.0, var.shape(), &Device::Cpu)?,
                        Tensor::from_slice(&mv.1, var.shape(), &Device::Cpu)?,
                    )
                }
                Moments::Device(m, v) => (m.to_device(&Device::Cpu)?, v.to_device(&Device::Cpu)?),
            };
            out.insert(format!("{name}.m"), m);
            out.insert(format!("{name}.v"), v);
        }
        // f32 holds integers exactly up to 2^24: the step count goes in as two 24-bit words.
        let words = [(self.step >> 24) as f32, (self.step & 0xFF_FFFF) as f32];
        out.insert("step".into(), Tensor::from_slice(&words, 2, &Device::Cpu)?);
        Ok(out)
    }

    /// Restores what [`state_tensors`](Self::state_tensors) saved; every variable's moments
    /// must be present with its shape.
    pub fn load_state_tensors(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let step = tensors
            .get("step")
            .ok_or_else(|| candle_core::Error::Msg("no `step` in the optimiser state".into()))?
            .to_vec1::<f32>()?;
        if step.len() != 2 || step.iter().any(|w| !(0.0..16_777_216.0).contains(w)) {
            candle_core::bail!("bad `step` in the optimiser state");
        }
        let mut restored = Vec::with_capacity(self.vars.len());
        for (name, var) in &self.vars {
            let get = |k: &str| -> Result<Tensor> {
                let t = tensors.get(&format!("{name}.{k}")).ok_or_else(|| {
                    candle_core::Error::Msg(format!("no moments for parameter {name}"))
                })?;
                if t.dims() != var.dims() {
                    candle_core::bail!(
                        "moments of {name} have shape {:?}, the parameter {:?}",
                        t.dims(),
                        var.dims()
                    );
                }
                Ok(t.clone())
            };
            let (m, v) = (get("m")?, get("v")?);
            restored.push(if var.device().is_cpu() {
                Moments::Cpu(Mutex::new((
                    m.flatten_all()?.to_vec1()?,
                    v.flatten_all()?.to_vec1()?,
                )))
            } else {
                Moments::Device(m.to_device(var.device())?, v.to_device(var.device())?)
            });
        }
        self.moments = restored;
        self.step = ((step[0] as u64) << 24) | step[1] as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};

    fn named(v: &Var) -> Vec<(String, Var)> {
        vec![("w".to_string(), v.clone())]
    }

    fn loss_grads(v: &Var, target: &Tensor) -> GradStore {
        (v.as_tensor() - target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    #[test]
    fn matches_candle_adamw_without_weight_decay_and_clips() {
        let init = Tensor::new(&[0.5f32, -1.0, 2.0, 0.0], &Device::Cpu).unwrap();
        let target = Tensor::new(&[1.0f32, 1.0, -1.0, 3.0], &Device::Cpu).unwrap();
        let (a, b) = (
            Var::from_tensor(&init).unwrap(),
            Var::from_tensor(&init).unwrap(),
        );
        let mut ours = Adam::new(
            named(&a),
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
            named(&c),
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

    #[test]
    fn weight_decay_matches_candle_adamw() {
        let init = Tensor::new(&[0.5f32, -1.0, 2.0, 0.0], &Device::Cpu).unwrap();
        let target = Tensor::new(&[1.0f32, 1.0, -1.0, 3.0], &Device::Cpu).unwrap();
        let (a, b) = (
            Var::from_tensor(&init).unwrap(),
            Var::from_tensor(&init).unwrap(),
        );
        let cfg = AdamConfig {
            lr: 0.05,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut ours = Adam::new(named(&a), cfg).unwrap();
        let mut theirs = AdamW::new(
            vec![b.clone()],
            ParamsAdamW {
                lr: 0.05,
                weight_decay: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        for _ in 0..6 {
            ours.step(loss_grads(&a, &target)).unwrap();
            theirs.step(&loss_grads(&b, &target)).unwrap();
        }
        let (x, y): (Vec<f32>, Vec<f32>) = (a.to_vec1().unwrap(), b.to_vec1().unwrap());
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() < 1e-5, "{x:?} vs {y:?}");
        }
    }

    #[test]
    fn saved_moments_resume_exactly() {
        let init = Tensor::new(&[0.5f32, -1.0, 2.0, 0.0], &Device::Cpu).unwrap();
        let target = Tensor::new(&[1.0f32, 1.0, -1.0, 3.0], &Device::Cpu).unwrap();
        let cfg = AdamConfig {
            lr: 0.1,
            clip_value: Some(2.0),
            ..Default::default()
        };
        let straight = Var::from_tensor(&init).unwrap();
        let mut opt = Adam::new(named(&straight), cfg).unwrap();
        for _ in 0..7 {
            opt.step(loss_grads(&straight, &target)).unwrap();
        }
        // Stop after 3 steps, save, rebuild from scratch, load, go on.
        let resumed = Var::from_tensor(&init).unwrap();
        let mut first = Adam::new(named(&resumed), cfg).unwrap();
        for _ in 0..3 {
            first.step(loss_grads(&resumed, &target)).unwrap();
        }
        let state = first.state_tensors().unwrap();
        let mut second = Adam::new(named(&resumed), cfg).unwrap();
        second.load_state_tensors(&state).unwrap();
        assert_eq!(second.steps(), 3);
        for _ in 0..4 {
            second.step(loss_grads(&resumed, &target)).unwrap();
        }
        assert_eq!(
            straight.to_vec1::<f32>().unwrap(),
            resumed.to_vec1::<f32>().unwrap()
        );
        // A state for another shape is refused.
        let other = Var::from_tensor(&Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let mut wrong = Adam::new(named(&other), cfg).unwrap();
        assert!(wrong.load_state_tensors(&state).is_err());
    }

    #[test]
    fn clip_norm_scales_the_whole_gradient() {
        let start = Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap();
        let grads = |v: &Var, k: f64| {
            (v.as_tensor().sqr().unwrap().sum_all().unwrap() * k)
                .unwrap()
                .backward()
                .unwrap()
        };
        let cfg = AdamConfig {
            lr: 0.5,
            ..Default::default()
        };
        // d/dv sum(v^2) = 2v = (6, 8): norm 10, clipped to 1. The second step's gradient is
        // under the limit. The same as feeding the pre-scaled gradient unclipped.
        let (a, b, c) = (
            Var::from_tensor(&start).unwrap(),
            Var::from_tensor(&start).unwrap(),
            Var::from_tensor(&start).unwrap(),
        );
        let clipped_cfg = AdamConfig {
            clip_norm: Some(1.0),
            ..cfg
        };
        let mut clipped = Adam::new(named(&a), clipped_cfg).unwrap();
        assert!((clipped.grad_norm(&grads(&a, 1.0)).unwrap() - 10.0).abs() < 1e-5);
        let mut manual = Adam::new(named(&b), cfg).unwrap();
        let mut plain = Adam::new(named(&c), cfg).unwrap();
        clipped.step(grads(&a, 1.0)).unwrap();
        manual.step(grads(&b, 1.0 / (10.0 + 1e-6))).unwrap();
        plain.step(grads(&c, 1.0)).unwrap();
        clipped.step(grads(&a, 0.05)).unwrap();
        manual.step(grads(&b, 0.05)).unwrap();
        plain.step(grads(&c, 0.05)).unwrap();
        let (x, y, z): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            a.to_vec1().unwrap(),
            b.to_vec1().unwrap(),
            c.to_vec1().unwrap(),
        );
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() < 1e-5, "{x:?} vs {y:?}");
        }
        assert!(
            (x[0] - z[0]).abs() > 1e-3,
            "clipping changed nothing: {x:?} vs {z:?}"
        );
    }

    #[test]
    fn a_large_parameter_updates_the_same_on_any_number_of_threads() {
        // Over two chunks, so the update and the norm run on rayon's threads.
        let n = 2 * CHUNK + 1234;
        let values = |k: u64| -> Vec<f32> {
            (0..n as u64)
                .map(|i| (((i * 2_654_435_761 + k) % 2001) as f32 - 1000.0) / 700.0)
                .collect()
        };
        let (start, target) = (values(1), values(7));
        let cfg = AdamConfig {
            lr: 0.01,
            weight_decay: 0.1,
            clip_norm: Some(5.0),
            clip_value: Some(0.004),
            ..Default::default()
        };
        let run = |threads: usize| -> (Vec<f32>, f64) {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let v = Var::from_tensor(&Tensor::new(start.as_slice(), &Device::Cpu).unwrap())
                    .unwrap();
                let t = Tensor::new(target.as_slice(), &Device::Cpu).unwrap();
                let mut opt = Adam::new(named(&v), cfg).unwrap();
                let norm = opt.grad_norm(&loss_grads(&v, &t)).unwrap();
                for _ in 0..3 {
                    opt.step(loss_grads(&v, &t)).unwrap();
                }
                (v.to_vec1().unwrap(), norm)
            })
        };
        let (one, norm1) = run(1);
        let (two, norm2) = run(2);
        assert_eq!(one, two);
        assert_eq!(norm1.to_bits(), norm2.to_bits());
        // The norm of 2 (p - t), summed directly in f64.
        let direct: f64 = start
            .iter()
            .zip(&target)
            .map(|(p, t)| (2.0 * (f64::from(*p) - f64::from(*t))).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (norm1 - direct).abs() < 1e-4 * direct,
            "{norm1} vs {direct}"
        );
        // The scalar recurrence, element by element, for the first step and beyond.
        let (mut p, mut m, mut v) = (start.clone(), vec![0f32; n], vec![0f32; n]);
        for step in 1..=3 {
            let g: Vec<f32> = p.iter().zip(&target).map(|(p, t)| 2.0 * (p - t)).collect();
            let norm = g.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let scale = if norm > 5.0 { 5.0 / (norm + 1e-6) } else { 1.0 };
            let (bc1, bc2) = (1.0 - 0.9f64.powi(step), 1.0 - 0.999f64.powi(step));
            let lr_t = (0.01 * bc2.sqrt() / bc1) as f32;
            let eps_t = (1e-8 * bc2.sqrt()) as f32;
            for i in 0..n {
                let gi = (g[i] * scale as f32).clamp(-0.004, 0.004);
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + (1.0 - 0.999) * gi * gi;
                p[i] = p[i] * (1.0 - 0.01 * 0.1) - lr_t * m[i] / (v[i].sqrt() + eps_t);
            }
        }
        for (i, (a, b)) in one.iter().zip(&p).enumerate() {
            assert!((a - b).abs() < 1e-6, "element {i}: {a} vs {b}");
        }
        assert_ne!(one, start);
    }
}
