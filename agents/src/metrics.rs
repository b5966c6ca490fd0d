//! A training stage's metrics: one CSV row per step in `metrics/<stage>.csv`, and the same
//! numbers as TensorBoard scalars in `tb/<stage>/` (tags `<stage>/<column>`), so that
//! `tensorboard --logdir runs/` shows every curve.
//!
//! A resumed stage keeps only the rows of the epochs its checkpoint holds: the rows of an
//! epoch that was cut off are dropped, and the step column goes on from the checkpoint, so a
//! resumed run's metrics are byte for byte those of an uninterrupted one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::RunDir;
use crate::tensorboard::{Scalar, event_file_bytes, event_file_name};

/// The metrics of one stage.
pub struct MetricsLog {
    stage: String,
    csv: PathBuf,
    tb_dir: PathBuf,
    columns: Vec<String>,
    /// Index of the step column (the x axis of every TensorBoard scalar).
    step_column: usize,
    rows: Vec<Vec<f64>>,
    wall: Vec<f64>,
    file: std::fs::File,
}

/// Formats a value as the shortest text that reads back to it, as f32 when it is one (losses
/// are f32) so the CSV does not show f32 rounding noise.
fn cell(v: f64) -> String {
    if (v as f32) as f64 == v || v.is_nan() {
        format!("{}", v as f32)
    } else {
        format!("{v}")
    }
}

/// `v` as the metrics file holds it (what [`read_csv`] reads back).
pub(crate) fn as_saved(v: f64) -> f64 {
    cell(v).parse().unwrap_or(v)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reads a metrics CSV: the header's columns and every row (unparseable cells are NaN). A
/// missing file is empty; rows without a value for every column are skipped.
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<f64>>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (Vec::new(), Vec::new());
    };
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .map(|h| h.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let rows = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split(',')
                .map(|v| v.parse().unwrap_or(f64::NAN))
                .collect::<Vec<f64>>()
        })
        .filter(|r: &Vec<f64>| r.len() == header.len())
        .collect();
    (header, rows)
}

impl MetricsLog {
    /// Opens the log of `stage` with `columns` (the first is the epoch or generation; a column
    /// named `step`, else the first, is the x axis). With `keep_before = Some(k)`, rows whose
    /// first column is below `k` are kept (a resume after `k` epochs); with `None` the log
    /// starts empty.
    pub fn open(
        run: &RunDir,
        stage: &str,
        columns: &[&str],
        keep_before: Option<f64>,
    ) -> anyhow::Result<Self> {
        let csv = run.metrics(stage);
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        let mut rows = Vec::new();
        if let Some(k) = keep_before {
            let (header, old) = read_csv(&csv);
            if header == columns {
                // A row cut short by a crash is dropped with the epoch it belonged to.
                rows = old
                    .into_iter()
                    .filter(|r| r.len() == columns.len() && r[0] < k)
                    .collect();
            }
        }
        let mut text = columns.join(",");
        text.push('\n');
        for r in &rows {
            text.push_str(&r.iter().map(|v| cell(*v)).collect::<Vec<_>>().join(","));
            text.push('\n');
        }
        dreamgym_base::write_atomic(&csv, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&csv)
            .with_context(|| format!("cannot append to {}", csv.display()))?;
        let step_column = columns.iter().position(|c| c == "step").unwrap_or(0);
        let t = now();
        let log = Self {
            stage: stage.to_string(),
            csv,
            tb_dir: run.tensorboard(stage),
            wall: vec![t; rows.len()],
            columns,
            step_column,
            rows,
            file,
        };
        log.write_tensorboard()?;
        Ok(log)
    }

    /// Rows so far.
    pub fn rows(&self) -> &[Vec<f64>] {
        &self.rows
    }

    /// Appends one row (one value per column).
    pub fn push(&mut self, row: &[f64]) -> anyhow::Result<()> {
        anyhow::ensure!(
            row.len() == self.columns.len(),
            "metrics {}: {} values for {} columns",
            self.stage,
            row.len(),
            self.columns.len()
        );
        let line = row.iter().map(|v| cell(*v)).collect::<Vec<_>>().join(",");
        writeln!(self.file, "{line}")
            .with_context(|| format!("cannot write {}", self.csv.display()))?;
        self.rows.push(row.to_vec());
        self.wall.push(now());
        Ok(())
    }

    /// Makes everything pushed so far durable (call it with each checkpoint) and rewrites the
    /// TensorBoard event file to match the CSV.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("cannot sync {}", self.csv.display()))?;
        self.write_tensorboard()
    }

    fn write_tensorboard(&self) -> anyhow::Result<()> {
        let mut scalars = Vec::new();
        for (row, wall) in self.rows.iter().zip(&self.wall) {
            let step = row[self.step_column] as i64;
            for (i, name) in self.columns.iter().enumerate() {
                if i == 0 || i == self.step_column || !row[i].is_finite() {
                    continue;
                }
                scalars.push(Scalar {
                    tag: format!("{}/{name}", self.stage),
                    step,
                    value: row[i] as f32,
                    wall_time: *wall,
                });
            }
        }
        let start = self.wall.first().copied().unwrap_or_else(now);
        // One file per stage, replaced whole: remove event files of earlier runs first.
        if let Ok(entries) = std::fs::read_dir(&self.tb_dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains("tfevents") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let path = self.tb_dir.join(event_file_name(start));
        dreamgym_base::write_atomic(&path, &event_file_bytes(&scalars, start))?;
        Ok(())
    }
}

/// A learning rate with a linear warm-up over `warmup_steps`, then a cosine decay to `lr / 10`
/// at `steps`: the transformer trainers' schedule.
pub fn warmup_cosine(lr: f64, warmup_steps: usize, steps: usize, step: usize) -> f64 {
    if step < warmup_steps {
        return lr * (step + 1) as f64 / warmup_steps as f64;
    }
    let span = (steps - warmup_steps.min(steps)).max(1) as f64;
    let progress = ((step - warmup_steps) as f64 / span).min(1.0);
    let min = lr / 10.0;
    min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_drops_the_cut_off_epoch_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut log = MetricsLog::open(&run, "vae", &["epoch", "step", "loss"], None).unwrap();
        for (e, s, l) in [(0., 0., 1.5), (0., 1., 1.25), (1., 2., 0.5)] {
            log.push(&[e, s, l]).unwrap();
        }
        log.commit().unwrap();
        drop(log);
        let mut log = MetricsLog::open(&run, "vae", &["epoch", "step", "loss"], Some(1.0)).unwrap();
        assert_eq!(log.rows().len(), 2);
        let text = std::fs::read_to_string(run.metrics("vae")).unwrap();
        assert_eq!(text, "epoch,step,loss\n0,0,1.5\n0,1,1.25\n");
        assert!(log.push(&[1.0]).is_err());
        // 0.1f32 prints as 0.1, not as its f64 expansion.
        assert_eq!(cell(0.1f32 as f64), "0.1");
        assert_eq!(cell(0.1), "0.1");
        let tb: Vec<_> = std::fs::read_dir(run.tensorboard("vae")).unwrap().collect();
        assert_eq!(tb.len(), 1);
    }
}
