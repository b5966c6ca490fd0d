//! The run folder: the one place a run's files live.
//!
//! ```text
//! runs/<name>/
//!   experiment.toml           the resolved config the run was made with
//!   data/                     the recorded dataset (dataset.json + chunks)
//!   vae.{safetensors,json}    V, with vae.optimizer.safetensors while training
//!   series.safetensors        every frame encoded by V
//!   mdnrnn.{safetensors,json} M
//!   controller.json           C
//!   eval.json, report.md, figures/*.png
//!   metrics/<stage>.csv       one row per step (or generation)
//!   tb/<stage>/events.out.tfevents.*   the same metrics for TensorBoard
//!   rounds/<r>/               round r of the iterative procedure, a run folder of its own
//!   rounds.json, rounds.md    the rounds' real and dream scores side by side
//! ```

use std::path::{Path, PathBuf};

/// A run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run folder at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The default folder of a run named `name`: `runs/<name>`.
    pub fn for_name(name: &str) -> Self {
        Self::new(Path::new("runs").join(name))
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The recorded dataset: `<run>/data`.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A file in the run folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A checkpoint stem (`vae` → `<run>/vae.safetensors` + `<run>/vae.json`).
    pub fn checkpoint(&self, stem: &str) -> PathBuf {
        self.root.join(stem)
    }

    /// The resolved experiment config: `<run>/experiment.toml`.
    pub fn experiment(&self) -> PathBuf {
        self.root.join("experiment.toml")
    }

    /// A stage's metrics CSV: `<run>/metrics/<stage>.csv`.
    pub fn metrics(&self, stage: &str) -> PathBuf {
        self.root.join("metrics").join(format!("{stage}.csv"))
    }

    /// A stage's TensorBoard folder: `<run>/tb/<stage>`.
    pub fn tensorboard(&self, stage: &str) -> PathBuf {
        self.root.join("tb").join(stage)
    }

    /// Takes the run folder's lock (creating the folder): one process writes a run at a time;
    /// a second gets an error naming the first's pid. Released when dropped or on any exit.
    /// Whoever holds the lock also removes the temporary files a killed process left in the
    /// run's folders.
    pub fn lock(&self) -> Result<dreamgym_base::FolderLock, dreamgym_base::LockError> {
        let lock = dreamgym_base::FolderLock::acquire(&self.root)?;
        dreamgym_base::remove_stale_temporaries(&self.root);
        for sub in ["metrics", "figures"] {
            dreamgym_base::remove_stale_temporaries(&self.root.join(sub));
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join("tb")) {
            for e in entries.flatten() {
                dreamgym_base::remove_stale_temporaries(&e.path());
            }
        }
        Ok(lock)
    }

    /// The figures folder: `<run>/figures`.
    pub fn figures(&self) -> PathBuf {
        self.root.join("figures")
    }
}
