//! Evaluation: many episodes, each (policy, seed) on its own env, spread over worker threads.
//! Every policy meets the same seeds, and the result is in job order whatever the number of
//! threads.

use dreamgym_envs::Env;
use dreamgym_policies::Policy;

use crate::{EpisodeStats, Interrupted, Progress, run_episode};

/// Runs `jobs` (policy index, episode seed) on `envs.len()` threads, one env each, with a fork
/// of `policies[index]` per thread. Returns each job's stats in job order. Reports one unit of
/// progress per finished episode and stops early with [`Interrupted`] when asked to.
pub fn run_jobs(
    envs: &mut [Box<dyn Env>],
    policies: &[&dyn Policy],
    jobs: &[(usize, u64)],
    max_steps: u64,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<EpisodeStats>> {
    anyhow::ensure!(!envs.is_empty(), "evaluation needs at least one env");
    if let Some((p, _)) = jobs.iter().find(|(p, _)| *p >= policies.len()) {
        anyhow::bail!("job names policy {p} of {}", policies.len());
    }
    let n = envs.len();
    let mut results = vec![None; jobs.len()];
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = envs
            .iter_mut()
            .enumerate()
            .map(|(w, env)| {
                let mut forks: Vec<Box<dyn Policy>> = policies.iter().map(|p| p.fork()).collect();
                s.spawn(move || -> anyhow::Result<Vec<(usize, EpisodeStats)>> {
                    let mut out = Vec::new();
                    for (j, &(p, seed)) in jobs.iter().enumerate().skip(w).step_by(n) {
                        if progress.interrupted() {
                            return Err(Interrupted {
                                stage: "episodes".into(),
                                saved: "nothing from the episodes in flight".into(),
                            }
                            .into());
                        }
                        out.push((
                            j,
                            run_episode(env.as_mut(), forks[p].as_mut(), seed, max_steps)?,
                        ));
                        progress.advance(1);
                    }
                    Ok(out)
                })
            })
            .collect();
        for h in handles {
            for (j, r) in h
                .join()
                .map_err(|_| anyhow::anyhow!("an evaluation thread panicked"))??
            {
                results[j] = Some(r);
            }
        }
        Ok(())
    })?;
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| anyhow::anyhow!("an evaluation job did not run")))
        .collect()
}

/// Mean and (population) standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(1) as f64;
    (m, var.sqrt())
}
