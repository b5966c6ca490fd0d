//! Scripted experts and policy combinators for mixed-quality datasets.
//!
//! Offline RL is judged on datasets of mixed quality (D4RL's "medium-expert" and "medium-replay"):
//! an expert, the same expert made worse by action noise, and random play. Here that is
//! - [`expert_for`]: a controller written from the env's physics for the built-in envs that
//!   have one (`CartPole-v0`: a linear state feedback; `Reacher-v0`: inverse kinematics and a
//!   PD loop on the joints);
//! - [`NoisyPolicy`]: any policy with Gaussian action noise (Box) or random actions taken with
//!   a probability (Discrete);
//! - [`MixturePolicy`]: one of several policies per episode, chosen from the episode's seed.
//!
//! Every random draw comes from the episode seed given to `reset`, so an episode is
//! reproducible from its seed alone.

use dreamgym_base::derive_seed;
use dreamgym_envs::builtin::tabletop;
use dreamgym_envs::{Space, Value};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Policy, PolicyError};

/// The envs [`expert_for`] has an expert for, with what it is.
pub const EXPERTS: &[(&str, &str)] = &[
    (
        "CartPole-v0",
        "linear feedback on the pole's angle and the cart's position (balances 500 steps)",
    ),
    (
        "Reacher-v0",
        "inverse kinematics to the target, then a PD loop on both joints",
    ),
    (
        "Tabletop-v0",
        "the scripted planner (mode = \"language\"): reads the instruction and the scene, \
         writes the commands",
    ),
];

/// The scripted expert of `env_id`, checked against its spaces; `None` when that env has none.
pub fn expert_for(
    env_id: &str,
    observation_space: &Space,
    action_space: &Space,
) -> Result<Option<Box<dyn Policy>>, PolicyError> {
    let obs_len = |n: usize| {
        observation_space
            .as_box()
            .is_some_and(|b| b.shape == [n] && b.dtype == dreamgym_envs::Dtype::F32)
    };
    let expert: Box<dyn Policy> = match env_id {
        "CartPole-v0" => {
            let fits = obs_len(4) && matches!(action_space, Space::Discrete(d) if d.n == 2);
            if !fits {
                return Err(PolicyError::Incompatible(format!(
                    "the CartPole-v0 expert reads the 4 state floats and pushes left or right; \
                     this env observes {observation_space} and acts in {action_space}"
                )));
            }
            Box::new(CartPoleExpert)
        }
        "Reacher-v0" => {
            let torques = action_space
                .as_box()
                .filter(|b| b.shape == [2] && b.low.iter().chain(&b.high).all(|v| v.is_finite()));
            let Some(b) = torques.filter(|_| obs_len(10)) else {
                return Err(PolicyError::Incompatible(format!(
                    "the Reacher-v0 expert reads the 10 state floats (obs = \"state\") and \
                     commands 2 bounded torques; this env observes {observation_space} and acts \
                     in {action_space}"
                )));
            };
            Box::new(ReacherExpert {
                low: [b.low[0], b.low[1]],
                high: [b.high[0], b.high[1]],
            })
        }
        "Tabletop-v0" => {
            let text = crate::language::is_text_space(observation_space);
            if !(text && matches!(action_space, Space::Text(_))) {
                return Err(PolicyError::Incompatible(format!(
                    "the Tabletop-v0 expert is the language planner: it needs mode = \
                     \"language\" (text observations and actions); this env observes \
                     {observation_space} and acts in {action_space}"
                )));
            }
            Box::new(TabletopPlanner::default())
        }
        _ => return Ok(None),
    };
    Ok(Some(expert))
}

fn floats<'a>(obs: &'a Value, n: usize, who: &str) -> Result<&'a [f32], PolicyError> {
    match obs {
        Value::F32(v) if v.len() == n && v.iter().all(|x| x.is_finite()) => Ok(v),
        other => Err(PolicyError::Incompatible(format!(
            "{who} expects {n} finite floats, got {}",
            other.describe()
        ))),
    }
}

/// Tabletop-v0 in language mode: reads the instruction and the scene from the observation
/// text, resolves the instruction on the episode's first scene (a reference such as "the
/// leftmost object" or a displacement's start is fixed then), and writes the scripted
/// planner's commands; `done` once the planner sees nothing left to do.
#[derive(Debug, Clone, Default)]
pub struct TabletopPlanner {
    instruction: Option<tabletop::Instruction>,
}

impl Policy for TabletopPlanner {
    fn describe(&self) -> String {
        "expert (Tabletop scripted planner)".into()
    }
    fn reset(&mut self, _episode_seed: u64) -> Result<(), PolicyError> {
        self.instruction = None;
        Ok(())
    }
    fn act(&mut self, obs: &Value) -> Result<Value, PolicyError> {
        let text = crate::language::observation_text(obs).unwrap_or_default();
        let (words, scene) = tabletop::parse_observation(text).ok_or_else(|| {
            PolicyError::Incompatible(format!(
                "the Tabletop planner cannot read this observation: {}",
                obs.describe()
            ))
        })?;
        if self.instruction.is_none() {
            self.instruction =
                Some(tabletop::parse_instruction(&words, &scene).ok_or_else(|| {
                    PolicyError::Incompatible(format!(
                        "the Tabletop planner does not know the instruction {words:?}"
                    ))
                })?);
        }
        let plan = self
            .instruction
            .as_ref()
            .map(|i| tabletop::plan(i, &scene))
            .unwrap_or_default();
        Ok(Value::Text(if plan.is_empty() {
            "done".into()
        } else {
            tabletop::format_program(&plan)
        }))
    }
    fn fork(&self) -> Box<dyn Policy> {
        Box::new(TabletopPlanner::default())
    }
}

/// CartPole: push toward the side the pole falls to, with the cart's drift folded in
/// (`u = θ + 0.5·θ' + 0.05·x + 0.2·x'`; push right when `u > 0`).
#[derive(Debug, Clone, Copy)]
pub struct CartPoleExpert;

impl Policy for CartPoleExpert {
    fn describe(&self) -> String {
        "expert (CartPole state feedback)".into()
    }
    fn reset(&mut self, _episode_seed: u64) -> Result<(), PolicyError> {
        Ok(())
    }
    fn act(&mut self, obs: &Value) -> Result<Value, PolicyError> {
        let s = floats(obs, 4, "the CartPole expert")?;
        let u = s[2] + 0.5 * s[3] + 0.05 * s[0] + 0.2 * s[1];
        Ok(Value::Int(i64::from(u > 0.0)))
    }
    fn fork(&self) -> Box<dyn Policy> {
        Box::new(*self)
    }
}

/// Reacher: the joint angles that put the fingertip on the target (two-link inverse
/// kinematics, the elbow solution nearest the current one), reached by a PD loop.
#[derive(Debug, Clone, Copy)]
pub struct ReacherExpert {
    low: [f32; 2],
    high: [f32; 2],
}

/// Link lengths of `Reacher-v0`, m.
const LINKS: (f32, f32) = (0.1, 0.11);
/// PD gains: action per radian of error and per rad/s of joint speed. Chosen by a grid search
/// (KP 0.1 to 2, KD 0.02 to 0.2, 100 episodes each): mean return -3.8 here, -3.8 to -56
/// elsewhere.
const KP: f32 = 0.2;
const KD: f32 = 0.04;

fn wrap(a: f32) -> f32 {
    (a + std::f32::consts::PI).rem_euclid(std::f32::consts::TAU) - std::f32::consts::PI
}

impl Policy for ReacherExpert {
    fn describe(&self) -> String {
        "expert (Reacher inverse kinematics + PD)".into()
    }
    fn reset(&mut self, _episode_seed: u64) -> Result<(), PolicyError> {
        Ok(())
    }
    fn act(&mut self, obs: &Value) -> Result<Value, PolicyError> {
        let s = floats(obs, 10, "the Reacher expert")?;
        let q = [s[2].atan2(s[0]), s[3].atan2(s[1])];
        let (tx, ty) = (s[4], s[5]);
        let (l0, l1) = LINKS;
        let d2 = (tx * tx + ty * ty).clamp(1e-8, (l0 + l1).powi(2));
        let c = ((d2 - l0 * l0 - l1 * l1) / (2.0 * l0 * l1)).clamp(-1.0, 1.0);
        let elbow = c.acos();
        // Two solutions (elbow up or down): take the one nearest the current elbow angle.
        let q1 = if (elbow - q[1]).abs() <= (-elbow - q[1]).abs() {
            elbow
        } else {
            -elbow
        };
        let q0 = ty.atan2(tx) - (l1 * q1.sin()).atan2(l0 + l1 * q1.cos());
        let want = [q0, q1];
        let mut a = [0f32; 2];
        for j in 0..2 {
            let u = KP * wrap(want[j] - q[j]) - KD * s[6 + j];
            a[j] = u.clamp(self.low[j], self.high[j]);
        }
        Ok(Value::F32(a.to_vec()))
    }
    fn fork(&self) -> Box<dyn Policy> {
        Box::new(*self)
    }
}

/// A policy made worse on purpose: for a bounded Box action, Gaussian noise of standard
/// deviation `noise` × half the range is added and the result clipped; for Discrete and
/// MultiDiscrete, each step takes a uniformly random action with probability `noise`.
pub struct NoisyPolicy {
    inner: Box<dyn Policy>,
    space: Space,
    noise: f64,
    seed: u64,
    rng: ChaCha8Rng,
}

impl NoisyPolicy {
    /// `inner` with action noise `noise` (in `[0, 1]` for discrete spaces, `>= 0` for boxes).
    pub fn new(
        inner: Box<dyn Policy>,
        space: Space,
        noise: f64,
        seed: u64,
    ) -> Result<Self, PolicyError> {
        let ok = match &space {
            Space::Box(b) => {
                noise.is_finite()
                    && noise >= 0.0
                    && b.low.iter().chain(&b.high).all(|v| v.is_finite())
            }
            Space::Discrete(_) | Space::MultiDiscrete(_) => (0.0..=1.0).contains(&noise),
            _ => false,
        };
        if !ok {
            return Err(PolicyError::Config(format!(
                "action noise {noise} does not apply to {space}: a bounded Box takes a standard \
                 deviation >= 0 (in half-ranges), a discrete space a probability in [0, 1]"
            )));
        }
        Ok(Self {
            inner,
            space,
            noise,
            seed,
            rng: ChaCha8Rng::seed_from_u64(derive_seed(seed, "policy.noise", 0)),
        })
    }
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl Policy for NoisyPolicy {
    fn describe(&self) -> String {
        format!("{} with action noise {}", self.inner.describe(), self.noise)
    }
    fn reset(&mut self, episode_seed: u64) -> Result<(), PolicyError> {
        self.rng = ChaCha8Rng::seed_from_u64(derive_seed(self.seed, "policy.noise", episode_seed));
        self.inner.reset(episode_seed)
    }
    fn act(&mut self, obs: &Value) -> Result<Value, PolicyError> {
        let a = self.inner.act(obs)?;
        Ok(match (&self.space, a) {
            (Space::Box(b), Value::F32(mut v)) => {
                for (i, x) in v.iter_mut().enumerate() {
                    let half = 0.5 * (b.high[i] - b.low[i]) as f64;
                    let y = *x as f64 + self.noise * half * normal(&mut self.rng);
                    *x = (y as f32).clamp(b.low[i], b.high[i]);
                }
                Value::F32(v)
            }
            (_, a) => {
                if self.rng.random::<f64>() < self.noise {
                    self.space.sample(&mut self.rng)
                } else {
                    a
                }
            }
        })
    }
    fn reward(&mut self, reward: f64) {
        self.inner.reward(reward);
    }
    fn fork(&self) -> Box<dyn Policy> {
        Box::new(Self {
            inner: self.inner.fork(),
            space: self.space.clone(),
            noise: self.noise,
            seed: self.seed,
            rng: self.rng.clone(),
        })
    }
}

/// One of several policies per episode, drawn uniformly from the episode's seed (repeat an
/// entry to weight it).
pub struct MixturePolicy {
    parts: Vec<Box<dyn Policy>>,
    seed: u64,
    current: usize,
}

impl MixturePolicy {
    /// A mixture of `parts` (at least one).
    pub fn new(parts: Vec<Box<dyn Policy>>, seed: u64) -> Result<Self, PolicyError> {
        if parts.is_empty() {
            return Err(PolicyError::Config(
                "a mixture needs at least one policy".into(),
            ));
        }
        Ok(Self {
            parts,
            seed,
            current: 0,
        })
    }

    /// Which part acts in the current episode.
    pub fn current(&self) -> usize {
        self.current
    }
}

impl Policy for MixturePolicy {
    fn describe(&self) -> String {
        format!(
            "mixture, now {} (of {})",
            self.parts[self.current].describe(),
            self.parts.len()
        )
    }
    fn reset(&mut self, episode_seed: u64) -> Result<(), PolicyError> {
        let mut rng =
            ChaCha8Rng::seed_from_u64(derive_seed(self.seed, "policy.mixture", episode_seed));
        self.current = rng.random_range(0..self.parts.len());
        self.parts[self.current].reset(episode_seed)
    }
    fn act(&mut self, obs: &Value) -> Result<Value, PolicyError> {
        self.parts[self.current].act(obs)
    }
    fn reward(&mut self, reward: f64) {
        self.parts[self.current].reward(reward);
    }
    fn fork(&self) -> Box<dyn Policy> {
        Box::new(Self {
            parts: self.parts.iter().map(|p| p.fork()).collect(),
            seed: self.seed,
            current: self.current,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dreamgym_envs::{BoxSpace, Discrete};

    fn reacher_obs(q: [f32; 2], target: [f32; 2], dq: [f32; 2]) -> Value {
        let (l0, l1) = LINKS;
        let tip = [
            l0 * q[0].cos() + l1 * (q[0] + q[1]).cos(),
            l0 * q[0].sin() + l1 * (q[0] + q[1]).sin(),
        ];
        Value::F32(vec![
            q[0].cos(),
            q[1].cos(),
            q[0].sin(),
            q[1].sin(),
            target[0],
            target[1],
            dq[0],
            dq[1],
            tip[0] - target[0],
            tip[1] - target[1],
        ])
    }

    fn reacher() -> Box<dyn Policy> {
        let obs = Space::Box(BoxSpace::uniform(
            vec![10],
            f32::NEG_INFINITY,
            f32::INFINITY,
        ));
        let act = Space::Box(BoxSpace::uniform(vec![2], -1.0, 1.0));
        expert_for("Reacher-v0", &obs, &act).unwrap().unwrap()
    }

    #[test]
    fn reacher_expert_is_still_on_the_target_and_turns_toward_it_elsewhere() {
        let mut p = reacher();
        // The target where the arm's fingertip already is: no torque.
        let q = [0.7f32, -1.1];
        let (l0, l1) = LINKS;
        let tip = [
            l0 * q[0].cos() + l1 * (q[0] + q[1]).cos(),
            l0 * q[0].sin() + l1 * (q[0] + q[1]).sin(),
        ];
        let Value::F32(a) = p.act(&reacher_obs(q, tip, [0.0; 2])).unwrap() else {
            panic!("a Box action")
        };
        assert!(a.iter().all(|x| x.abs() < 1e-4), "{a:?}");
        // A target counter-clockwise of the arm (stretched along +x): the shoulder turns
        // counter-clockwise (positive torque).
        let Value::F32(a) = p
            .act(&reacher_obs([0.0, 0.0], [0.0, 0.2], [0.0; 2]))
            .unwrap()
        else {
            panic!("a Box action")
        };
        assert!(a[0] > 0.0, "{a:?}");
        // Spinning joints are braked.
        let Value::F32(a) = p.act(&reacher_obs(q, tip, [5.0, -5.0])).unwrap() else {
            panic!("a Box action")
        };
        assert!(a[0] < 0.0 && a[1] > 0.0, "{a:?}");
        assert!(p.act(&Value::F32(vec![0.0; 3])).is_err());
        assert!(
            p.act(&reacher_obs([f32::NAN, 0.0], [0.1, 0.0], [0.0; 2]))
                .is_err()
        );
    }

    #[test]
    fn experts_refuse_spaces_they_do_not_fit_and_unknown_envs_have_none() {
        let obs = Space::Box(BoxSpace::uniform(vec![4], f32::NEG_INFINITY, f32::INFINITY));
        let two = Space::Discrete(Discrete::new(2));
        assert!(expert_for("CartPole-v0", &obs, &two).unwrap().is_some());
        assert!(expert_for("CartPole-v0", &obs, &Space::Discrete(Discrete::new(3))).is_err());
        assert!(expert_for("Reacher-v0", &obs, &two).is_err());
        assert!(expert_for("Racer-v0", &obs, &two).unwrap().is_none());
    }

    #[test]
    fn cartpole_expert_pushes_toward_the_fall() {
        let mut p = CartPoleExpert;
        let act = |p: &mut CartPoleExpert, s: [f32; 4]| p.act(&Value::F32(s.to_vec())).unwrap();
        assert_eq!(act(&mut p, [0.0, 0.0, 0.1, 0.0]), Value::Int(1));
        assert_eq!(act(&mut p, [0.0, 0.0, -0.1, 0.0]), Value::Int(0));
    }

    #[test]
    fn noise_is_seeded_per_episode_clipped_and_zero_noise_changes_nothing() {
        let space = Space::Box(BoxSpace::uniform(vec![2], -1.0, 1.0));
        let obs = reacher_obs([0.3, 0.2], [0.1, 0.1], [0.0; 2]);
        let clean = reacher().act(&obs).unwrap();
        let mut none = NoisyPolicy::new(reacher(), space.clone(), 0.0, 1).unwrap();
        none.reset(5).unwrap();
        assert_eq!(none.act(&obs).unwrap(), clean);
        let mut noisy = NoisyPolicy::new(reacher(), space.clone(), 2.0, 1).unwrap();
        let run = |p: &mut NoisyPolicy, seed| {
            p.reset(seed).unwrap();
            (0..20).map(|_| p.act(&obs).unwrap()).collect::<Vec<_>>()
        };
        let a = run(&mut noisy, 3);
        let b = run(&mut noisy, 4);
        assert_eq!(a, run(&mut noisy, 3), "same episode seed, same noise");
        assert_ne!(a, b);
        assert!(a.iter().all(|v| space.contains(v)), "clipped to the box");
        assert!(a.iter().any(|v| *v != clean));
        // Discrete: probability 1 gives random actions, both of them over 20 steps.
        let two = Space::Discrete(Discrete::new(2));
        let mut p = NoisyPolicy::new(Box::new(CartPoleExpert), two.clone(), 1.0, 0).unwrap();
        p.reset(0).unwrap();
        let s = Value::F32(vec![0.0, 0.0, 0.1, 0.0]);
        let acts: Vec<Value> = (0..20).map(|_| p.act(&s).unwrap()).collect();
        assert!(acts.contains(&Value::Int(0)) && acts.contains(&Value::Int(1)));
        assert!(NoisyPolicy::new(Box::new(CartPoleExpert), two, 1.5, 0).is_err());
        assert!(NoisyPolicy::new(reacher(), space, f64::NAN, 0).is_err());
    }

    #[test]
    fn a_mixture_picks_its_part_from_the_episode_seed() {
        let two = Space::Discrete(Discrete::new(2));
        let parts: Vec<Box<dyn Policy>> = vec![
            Box::new(CartPoleExpert),
            Box::new(crate::RandomPolicy::new(two, 0)),
        ];
        let mut m = MixturePolicy::new(parts, 7).unwrap();
        let picks: Vec<usize> = (0..40)
            .map(|s| {
                m.reset(s).unwrap();
                m.current()
            })
            .collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
        let mut fork = m.fork();
        for s in 0..40u64 {
            fork.reset(s).unwrap();
            m.reset(s).unwrap();
            assert_eq!(fork.describe(), m.describe());
        }
        assert!(MixturePolicy::new(Vec::new(), 0).is_err());
    }
}
