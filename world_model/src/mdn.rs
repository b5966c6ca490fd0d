//! M: the mixture-density recurrent network of "World Models": an LSTM over [z_t, a_t] whose
//! output parameterises p(z_{t+1}) as a mixture of Gaussians per latent dimension, with optional
//! reward and done heads.

use candle_core::{D, Device, Tensor};
use candle_nn::VarMap;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::WmError;
use dreamgym_nn::{Linear, Lstm, ParamInit, contiguous_f32, fast_exp};

/// M's architecture and loss weights. The defaults are the paper's CarRacing model (LSTM 256,
/// 5 mixtures over z = 32) plus reward and done heads for dreaming.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MdnRnnConfig {
    /// Latent size (V's `z_size`).
    pub z_size: usize,
    /// Action size.
    pub action_size: usize,
    /// LSTM units.
    pub hidden: usize,
    /// Gaussians per latent dimension.
    pub mixtures: usize,
    /// Predict the step's reward (squared error, weighted by `reward_weight`).
    pub reward_head: bool,
    /// Predict whether the step ended the episode (logistic loss, weighted by `done_weight`).
    pub done_head: bool,
    /// Weight of the reward loss.
    pub reward_weight: f32,
    /// Weight of the done loss.
    pub done_weight: f32,
}

impl Default for MdnRnnConfig {
    fn default() -> Self {
        Self {
            z_size: 32,
            action_size: 3,
            hidden: 256,
            mixtures: 5,
            reward_head: true,
            done_head: true,
            reward_weight: 1.0,
            done_weight: 1.0,
        }
    }
}

impl MdnRnnConfig {
    /// Checks sizes are positive.
    pub fn validate(&self) -> Result<(), WmError> {
        if self.z_size == 0 || self.action_size == 0 || self.hidden == 0 || self.mixtures == 0 {
            return Err(WmError::Config(
                "mdnrnn: z_size, action_size, hidden and mixtures must be positive".into(),
            ));
        }
        if self.z_size > 65_536
            || self.action_size > 65_536
            || self.hidden > 65_536
            || self.mixtures > 1024
        {
            return Err(WmError::Config(
                "mdnrnn: z_size, action_size and hidden must be at most 65536, mixtures at most 1024"
                    .into(),
            ));
        }
        if !(self.reward_weight >= 0.0 && self.done_weight >= 0.0) {
            return Err(WmError::Config("mdnrnn: loss weights must be >= 0".into()));
        }
        Ok(())
    }
}

/// Mixture parameters for each (row, latent dimension): `[N, Z, K]` each, `log_pi` normalised.
pub struct Mixture {
    /// Log mixture weights (log-softmax over K).
    pub log_pi: Tensor,
    /// Means.
    pub mu: Tensor,
    /// Log standard deviations.
    pub log_sigma: Tensor,
}

/// M's outputs for a batch of sequences (rows are `batch * time`).
pub struct MdnOutput {
    /// The mixture head's raw output `[N, Z*3K]`: per latent dimension K logits, K means, K
    /// log-sigmas.
    pub raw: Tensor,
    z_size: usize,
    mixtures: usize,
    /// Predicted rewards `[N]`, if there is a reward head.
    pub reward: Option<Tensor>,
    /// Done logits `[N]`, if there is a done head.
    pub done_logit: Option<Tensor>,
}

impl MdnOutput {
    /// The next-z mixture (computed on demand: the training loss reads `raw` directly).
    pub fn mixture(&self) -> candle_core::Result<Mixture> {
        let n = self.raw.dim(0)?;
        // Per latent dimension a block of 3K numbers: K log-weights, K means, K log-sigmas.
        let out = self.raw.reshape((n, self.z_size, 3, self.mixtures))?;
        let logits = out.narrow(2, 0, 1)?.squeeze(2)?;
        let log_pi = logits.broadcast_sub(&logits.log_sum_exp(D::Minus1)?.unsqueeze(D::Minus1)?)?;
        let mu = out.narrow(2, 1, 1)?.squeeze(2)?;
        let log_sigma = out.narrow(2, 2, 1)?.squeeze(2)?;
        Ok(Mixture {
            log_pi,
            mu,
            log_sigma,
        })
    }
}

impl Mixture {
    /// The mixture's mean per (row, latent dimension), `[N, Z]`: `Σ_k π_k μ_k`.
    pub fn mean(&self) -> candle_core::Result<Tensor> {
        (self.log_pi.exp()? * &self.mu)?.sum(D::Minus1)
    }
}

/// How far apart the members of an ensemble put the next latent: the root mean square, over
/// latent dimensions, of the standard deviation across members of their mixture means
/// (`means[k]` is member k's mean for one step). 0 with fewer than two members.
pub fn disagreement(means: &[&[f32]]) -> f64 {
    let k = means.len();
    if k < 2 {
        return 0.0;
    }
    let z = means.iter().map(|m| m.len()).min().unwrap_or(0);
    if z == 0 {
        return 0.0;
    }
    let mut total = 0.0;
    for d in 0..z {
        let mean = means.iter().map(|m| m[d] as f64).sum::<f64>() / k as f64;
        total += means
            .iter()
            .map(|m| (m[d] as f64 - mean).powi(2))
            .sum::<f64>()
            / k as f64;
    }
    (total / z as f64).sqrt()
}

/// The terms of M's loss (scalars).
pub struct MdnLoss {
    /// What is minimised: z NLL + weighted reward and done losses.
    pub total: Tensor,
    /// Mean negative log-likelihood of z_{t+1} per latent dimension.
    pub z_nll: Tensor,
    /// Mean squared reward error (zero without a reward head).
    pub reward: Tensor,
    /// Mean logistic loss of the done flag (zero without a done head).
    pub done: Tensor,
}

/// A training batch: `z` `[B, T+1, Z]`, `actions` `[B, T, A]`, `rewards` and `dones` `[B, T]`.
pub struct SeqBatch {
    /// Latents of T+1 consecutive frames.
    pub z: Tensor,
    /// The T actions between them.
    pub actions: Tensor,
    /// The T rewards.
    pub rewards: Tensor,
    /// The T terminated flags (0 or 1).
    pub dones: Tensor,
}

const LOG_SQRT_2PI: f64 = 0.918_938_533_204_672_7;

/// Fused mixture NLL: (raw head output `[N, Z*3K]`, targets `[N, Z]`) → `[N, Z]` losses.
/// The composed version runs ~40 elementwise ops over `[N, Z, K]` forward and backward; this
/// is one pass each way. Backward (γ the posterior of each component, π its weight,
/// s = (y - μ)/σ): dl/dlogit = π - γ, dl/dμ = -γ s/σ, dl/dlogσ = -γ (s² - 1).
struct FusedNll {
    k: usize,
}

struct FusedNllBackward {
    k: usize,
}

/// One row's `z` cells laid out component-major (`[k][z]` per quantity), so every loop below
/// runs over the `z` cells of a component: contiguous lanes that vectorise. The head's output
/// is cell-major (`[z][3][k]`), a stride of 3k between a cell's values of one kind.
struct RowNll {
    k: usize,
    z: usize,
    /// Logits, then log σ, `[k][z]` each.
    logits: Vec<f32>,
    log_sigma: Vec<f32>,
    /// s = (y − μ)/σ and log π + log N(y; μ, σ), `[k][z]`.
    s: Vec<f32>,
    lp: Vec<f32>,
    /// Per cell: the largest logit, Σ e^(logit − max) and the log-likelihood v.
    max: Vec<f32>,
    total: Vec<f32>,
    v: Vec<f32>,
}

impl RowNll {
    /// The statistics of the cells in `block` (`z` cells of 3k values) against targets `y`.
    #[inline(always)]
    fn new(k: usize, z: usize, block: &[f32], y: &[f32]) -> Self {
        let kz = k * z;
        let (mut logits, mut mu, mut log_sigma) = (vec![0f32; kz], vec![0f32; kz], vec![0f32; kz]);
        for (c, cell) in block.chunks_exact(3 * k).enumerate() {
            for j in 0..k {
                logits[j * z + c] = cell[j];
                mu[j * z + c] = cell[k + j];
                log_sigma[j * z + c] = cell[2 * k + j];
            }
        }
        let mut max = vec![f32::NEG_INFINITY; z];
        for j in 0..k {
            for (m, l) in max.iter_mut().zip(&logits[j * z..(j + 1) * z]) {
                *m = m.max(*l);
            }
        }
        let mut total = vec![0f32; z];
        for j in 0..k {
            for ((t, l), m) in total.iter_mut().zip(&logits[j * z..(j + 1) * z]).zip(&max) {
                *t += fast_exp(l - m);
            }
        }
        let lse: Vec<f32> = max.iter().zip(&total).map(|(m, t)| m + t.ln()).collect();
        let (mut s, mut lp) = (mu, vec![0f32; kz]);
        let mut vmax = vec![f32::NEG_INFINITY; z];
        for j in 0..k {
            let r = j * z..(j + 1) * z;
            for c in 0..z {
                let (ls, l) = (log_sigma[r.start + c], logits[r.start + c]);
                let sc = (y[c] - s[r.start + c]) * fast_exp(-ls);
                s[r.start + c] = sc;
                let p = l - lse[c] - 0.5 * sc * sc - ls - LOG_SQRT_2PI as f32;
                lp[r.start + c] = p;
                vmax[c] = vmax[c].max(p);
            }
        }
        let mut sum = vec![0f32; z];
        for j in 0..k {
            for ((acc, p), m) in sum.iter_mut().zip(&lp[j * z..(j + 1) * z]).zip(&vmax) {
                *acc += fast_exp(p - m);
            }
        }
        let v = vmax.iter().zip(&sum).map(|(m, t)| m + t.ln()).collect();
        Self {
            k,
            z,
            logits,
            log_sigma,
            s,
            lp,
            max,
            total,
            v,
        }
    }

    /// The gradients of `grad`-weighted losses into the cells' 3k slots of `d` (γ the posterior
    /// of each component, π its weight): dl/dlogit = π − γ, dl/dμ = −γ s/σ,
    /// dl/dlogσ = −γ (s² − 1).
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // one index into seven arrays reads clearer than a zip
    fn grad_into(&self, grad: &[f32], d: &mut [f32]) {
        let (k, z) = (self.k, self.z);
        let mut gs = vec![0f32; 3 * k * z];
        for j in 0..k {
            let r = j * z..(j + 1) * z;
            for c in 0..z {
                let i = r.start + c;
                let gamma = fast_exp(self.lp[i] - self.v[c]);
                let pi = fast_exp(self.logits[i] - self.max[c]) / self.total[c];
                let s = self.s[i];
                gs[i] = grad[c] * (pi - gamma);
                gs[k * z + i] = grad[c] * (-gamma * s * fast_exp(-self.log_sigma[i]));
                gs[2 * k * z + i] = grad[c] * (-gamma * (s * s - 1.0));
            }
        }
        for (c, cell) in d.chunks_exact_mut(3 * k).enumerate() {
            for part in 0..3 {
                for j in 0..k {
                    cell[part * k + j] = gs[(part * k + j) * z + c];
                }
            }
        }
    }
}

/// The losses of row `r`'s `z` cells into `row`.
#[inline(always)]
fn nll_row(k: usize, z: usize, out: &[f32], y: &[f32], r: usize, row: &mut [f32]) {
    let stats = RowNll::new(
        k,
        z,
        &out[r * z * 3 * k..(r + 1) * z * 3 * k],
        &y[r * z..(r + 1) * z],
    );
    for (l, v) in row.iter_mut().zip(&stats.v) {
        *l = -v;
    }
}

/// The gradients of row `r`'s `z` cells (3k each) into `dr`.
#[inline(always)]
fn nll_grad_row(
    k: usize,
    z: usize,
    out: &[f32],
    y: &[f32],
    grad: &[f32],
    r: usize,
    dr: &mut [f32],
) {
    let stats = RowNll::new(
        k,
        z,
        &out[r * z * 3 * k..(r + 1) * z * 3 * k],
        &y[r * z..(r + 1) * z],
    );
    stats.grad_into(&grad[r * z..(r + 1) * z], dr);
}

/// The losses of rows of `z` cells, as a kernel whose loops are compiled for the vector unit
/// (`dreamgym_nn::par::RowKernel`; a closure's were not).
struct NllRows<'a> {
    k: usize,
    z: usize,
    out: &'a [f32],
    y: &'a [f32],
}

impl dreamgym_nn::par::RowKernel<f32> for NllRows<'_> {
    #[inline(always)]
    fn row(&self, r: usize, row: &mut [f32]) {
        // The paper's 5 components get loops of constant length.
        if self.k == 5 {
            nll_row(5, self.z, self.out, self.y, r, row)
        } else {
            nll_row(self.k, self.z, self.out, self.y, r, row)
        }
    }
}

/// The gradients of rows of `z` cells (3k each), as [`NllRows`].
struct NllGradRows<'a> {
    k: usize,
    z: usize,
    out: &'a [f32],
    y: &'a [f32],
    grad: &'a [f32],
}

impl dreamgym_nn::par::RowKernel<f32> for NllGradRows<'_> {
    #[inline(always)]
    fn row(&self, r: usize, dr: &mut [f32]) {
        let (z, out, y, grad) = (self.z, self.out, self.y, self.grad);
        if self.k == 5 {
            nll_grad_row(5, z, out, y, grad, r, dr)
        } else {
            nll_grad_row(self.k, z, out, y, grad, r, dr)
        }
    }
}

impl candle_core::CustomOp2 for FusedNll {
    fn name(&self) -> &'static str {
        "dreamgym-mixture-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (out, y) = (
            contiguous_f32(s1, l1, "mixture nll")?,
            contiguous_f32(s2, l2, "mixture nll")?,
        );
        let (n, z) = l2.shape().dims2()?;
        let k = self.k;
        if out.len() != n * z * 3 * k {
            candle_core::bail!("mixture nll: head output does not fit {n}x{z} targets");
        }
        // Rows of `z` cells on all threads (dreamgym_nn::par).
        let mut loss = vec![0f32; n * z];
        let rows = NllRows { k, z, out, y };
        dreamgym_nn::par::for_rows_with(&mut loss, z.max(1), 3 * k * z, &rows);
        Ok((
            candle_core::CpuStorage::F32(loss),
            candle_core::Shape::from((n, z)),
        ))
    }

    fn bwd(
        &self,
        out: &Tensor,
        y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = out.apply_op3_no_bwd(y, &grad.contiguous()?, &FusedNllBackward { k: self.k })?;
        Ok((Some(g), None))
    }
}

impl candle_core::CustomOp3 for FusedNllBackward {
    fn name(&self) -> &'static str {
        "dreamgym-mixture-nll-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (out, y, grad) = (
            contiguous_f32(s1, l1, "mixture nll")?,
            contiguous_f32(s2, l2, "mixture nll")?,
            contiguous_f32(s3, l3, "mixture nll")?,
        );
        let k = self.k;
        if y.len() * 3 * k != out.len() || grad.len() != y.len() {
            candle_core::bail!("mixture nll backward: inputs do not fit");
        }
        // A row of `z` cells' gradients (3k each) per task, on all threads
        // (dreamgym_nn::par); the scratch is allocated once per row, not per cell.
        let z = l1.dims().last().copied().unwrap_or(0) / (3 * k).max(1);
        let mut dout = vec![0f32; out.len()];
        let rows = NllGradRows { k, z, out, y, grad };
        dreamgym_nn::par::for_rows_with(&mut dout, (3 * k * z).max(1), 6 * k * z, &rows);
        Ok((candle_core::CpuStorage::F32(dout), l1.shape().clone()))
    }
}

/// M. Parameter names: `lstm.*`, `mdn`, `reward`, `done` (PyTorch layouts).
pub struct MdnRnn {
    config: MdnRnnConfig,
    varmap: VarMap,
    device: Device,
    lstm: Lstm,
    mdn: Linear,
    reward: Option<Linear>,
    done: Option<Linear>,
}

impl MdnRnn {
    /// A freshly initialised M (PyTorch's default initialisation, from `seed`).
    pub fn new(config: MdnRnnConfig, device: &Device, seed: u64) -> Result<Self, WmError> {
        config.validate()?;
        let varmap = VarMap::new();
        let mut init = ParamInit::new(&varmap, device, seed);
        let h = config.hidden;
        let lstm = Lstm::new(&mut init, "lstm", config.z_size + config.action_size, h)?;
        let mdn = Linear::new(&mut init, "mdn", h, config.z_size * config.mixtures * 3)?;
        let reward = if config.reward_head {
            Some(Linear::new(&mut init, "reward", h, 1)?)
        } else {
            None
        };
        let done = if config.done_head {
            Some(Linear::new(&mut init, "done", h, 1)?)
        } else {
            None
        };
        Ok(Self {
            config,
            varmap,
            device: device.clone(),
            lstm,
            mdn,
            reward,
            done,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &MdnRnnConfig {
        &self.config
    }

    /// The parameters.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A zero (h, c) for `batch` sequences.
    pub fn initial_state(&self, batch: usize) -> candle_core::Result<(Tensor, Tensor)> {
        self.lstm.zero_state(batch, &self.device)
    }

    /// The heads applied to hidden states `[N, H]`.
    pub fn heads(&self, h: &Tensor) -> candle_core::Result<MdnOutput> {
        let raw = self.mdn.forward(h)?;
        let reward = match &self.reward {
            Some(l) => Some(l.forward(h)?.squeeze(1)?),
            None => None,
        };
        let done_logit = match &self.done {
            Some(l) => Some(l.forward(h)?.squeeze(1)?),
            None => None,
        };
        Ok(MdnOutput {
            raw,
            z_size: self.config.z_size,
            mixtures: self.config.mixtures,
            reward,
            done_logit,
        })
    }

    /// Runs over `z` `[B, T, Z]` and `actions` `[B, T, A]` from a zero state; outputs for the
    /// `B*T` rows in batch-major order.
    pub fn forward(&self, z: &Tensor, actions: &Tensor) -> candle_core::Result<MdnOutput> {
        let (b, t, _) = z.dims3()?;
        let x = Tensor::cat(&[z, actions], 2)?;
        let (hs, _, _) = self.lstm.forward_from_zero(&x)?;
        self.heads(&hs.reshape((b * t, self.config.hidden))?)
    }

    /// One step from state (h, c): `z` `[B, Z]`, `action` `[B, A]` → outputs and (h', c').
    pub fn step(
        &self,
        z: &Tensor,
        action: &Tensor,
        h: &Tensor,
        c: &Tensor,
    ) -> candle_core::Result<(MdnOutput, Tensor, Tensor)> {
        let x = Tensor::cat(&[z, action], 1)?;
        let (h, c) = self.lstm.step(&x, h, c)?;
        Ok((self.heads(&h)?, h, c))
    }

    /// M's loss on a batch (see [`mixture_nll`] for the z term).
    pub fn loss(&self, batch: &SeqBatch) -> candle_core::Result<MdnLoss> {
        let (b, t1, z) = batch.z.dims3()?;
        let t = t1 - 1;
        let inputs = batch.z.narrow(1, 0, t)?;
        let targets = batch.z.narrow(1, 1, t)?.reshape((b * t, z))?;
        let out = self.forward(&inputs, &batch.actions)?;
        let z_nll = if self.device.is_cpu() {
            out.raw
                .contiguous()?
                .apply_op2(
                    &targets.contiguous()?,
                    FusedNll {
                        k: self.config.mixtures,
                    },
                )?
                .mean_all()?
        } else {
            mixture_nll(&out.mixture()?, &targets)?
        };
        let zero = Tensor::zeros((), candle_core::DType::F32, &self.device)?;
        let reward = match &out.reward {
            Some(r) => (r - batch.rewards.reshape(b * t)?)?.sqr()?.mean_all()?,
            None => zero.clone(),
        };
        let done = match &out.done_logit {
            Some(l) => bce_with_logits(l, &batch.dones.reshape(b * t)?)?,
            None => zero,
        };
        let total = ((&z_nll + (&reward * self.config.reward_weight as f64)?)?
            + (&done * self.config.done_weight as f64)?)?;
        Ok(MdnLoss {
            total,
            z_nll,
            reward,
            done,
        })
    }
}

/// Mean over rows and latent dimensions of `-log sum_k pi_k N(y; mu_k, sigma_k)`, through
/// log-sum-exp; `y` is `[N, Z]`.
pub fn mixture_nll(m: &Mixture, y: &Tensor) -> candle_core::Result<Tensor> {
    let y = y.unsqueeze(D::Minus1)?;
    let scaled = (y.broadcast_sub(&m.mu)? / m.log_sigma.exp()?)?;
    let log_normal = ((scaled.sqr()? * -0.5)? - &m.log_sigma)? - LOG_SQRT_2PI;
    let v = (&m.log_pi + log_normal?)?.log_sum_exp(D::Minus1)?;
    v.mean_all()?.neg()
}

/// Numerically stable mean logistic loss: `max(x, 0) - x y + log(1 + exp(-|x|))`.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let soft = ((logits.abs()?.neg()?.exp()? + 1.0)?).log()?;
    ((logits.relu()? - (logits * targets)?)? + soft)?.mean_all()
}

/// Samples one z per row from the mixture of row `row` (`[N, Z, K]` tensors already on the
/// CPU as vectors) with temperature `tau`: mixture logits divided by τ, noise scaled by √τ.
pub fn sample_mixture<R: Rng + ?Sized>(
    log_pi: &[f32],
    mu: &[f32],
    log_sigma: &[f32],
    k: usize,
    tau: f32,
    rng: &mut R,
) -> Vec<f32> {
    let z = log_pi.len() / k;
    let mut out = Vec::with_capacity(z);
    let tau = tau.max(1e-6);
    for d in 0..z {
        let lp = &log_pi[d * k..(d + 1) * k];
        let max = lp.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b / tau));
        let w: Vec<f32> = lp.iter().map(|&l| (l / tau - max).exp()).collect();
        let total: f32 = w.iter().sum();
        let mut u = rng.random::<f32>() * total;
        let mut pick = k - 1;
        for (j, wj) in w.iter().enumerate() {
            if u < *wj {
                pick = j;
                break;
            }
            u -= wj;
        }
        let eps = standard_normal(rng);
        let i = d * k + pick;
        out.push(mu[i] + log_sigma[i].exp() * eps * tau.sqrt());
    }
    out
}

pub use dreamgym_nn::standard_normal;
