//! Killing a rollout loses at most the episodes in flight: every chunk on disk is whole, and
//! Ctrl-C (SIGINT) writes every finished episode before exiting cleanly.

#![cfg(unix)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dreamgym::envs::recording::Dataset;

fn start_rollout(out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dreamgym"))
        .args([
            "rollout",
            "--env",
            "Racer-v0",
            "--episodes",
            "100000",
            "--num-envs",
            "4",
            "--workers",
            "2",
        ])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dreamgym")
}

/// Waits until the writer has flushed at least one chunk.
fn wait_for_chunk(out: &Path) {
    let started = Instant::now();
    while !out.join("chunk-000000.safetensors").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no chunk was written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

#[test]
fn sigkill_mid_rollout_leaves_only_whole_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let mut child = start_rollout(&out);
    wait_for_chunk(&out);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-KILL");
    child.wait().unwrap();
    let report = Dataset::open(&out).unwrap().load();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert!(!report.episodes.is_empty());
    // Chunks hold 64 whole episodes each: nothing partial was kept.
    assert_eq!(report.episodes.len() % 64, 0);
    assert!(
        report
            .episodes
            .iter()
            .all(|e| e.truncated.last() == Some(&true) || e.terminated.last() == Some(&true))
    );
}

#[test]
fn sigint_flushes_finished_episodes_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let child = start_rollout(&out);
    wait_for_chunk(&out);
    signal(&child, "-INT");
    let output = child.wait_with_output().unwrap();
    // 130: the shell's code for a process stopped by SIGINT.
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("interrupted"), "{stdout}");
    let report = Dataset::open(&out).unwrap().load();
    assert!(report.damaged.is_empty());
    assert!(!report.episodes.is_empty());
    // The summary's episode count is what is on disk.
    let written: usize = stdout
        .split("wrote ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(written, report.episodes.len());
}

#[test]
fn a_second_rollout_into_a_folder_in_use_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let mut child = start_rollout(&out);
    wait_for_chunk(&out);
    let second = Command::new(env!("CARGO_BIN_EXE_dreamgym"))
        .args([
            "rollout",
            "--env",
            "Racer-v0",
            "--episodes",
            "2",
            "--append",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    signal(&child, "-KILL");
    child.wait().unwrap();
    let text = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "in use by another dreamgym process (pid {})",
            child.id()
        )),
        "{text}"
    );
    // The lock went with the killed process: the folder is usable at once.
    let third = Command::new(env!("CARGO_BIN_EXE_dreamgym"))
        .args([
            "rollout",
            "--env",
            "Racer-v0",
            "--episodes",
            "2",
            "--append",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(third.status.success(), "{third:?}");
}

/// `dreamgym` under a file-size limit (`ulimit -f`, in KiB): writes past it fail with EFBIG,
/// as on a full disk.
fn rollout_with_file_limit(out: &Path, kib: Option<u64>, extra: &[&str]) -> std::process::Output {
    let limit = kib.map_or(String::new(), |k| format!("ulimit -f {k}; "));
    let script = format!(
        "trap '' XFSZ; {limit}out=\"$1\"; shift; exec \"$0\" rollout --env CartPole-v0 \
         --episodes 200 --out \"$out\" \"$@\""
    );
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_dreamgym"))
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn hidden_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".lock")
        .collect()
}

#[test]
fn a_full_disk_is_a_clear_error_that_leaves_no_debris_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    // Room for dataset.json but not for a chunk.
    let o = rollout_with_file_limit(&out, Some(8), &[]);
    let text = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("cannot write") && text.contains("chunk-000000.safetensors"),
        "{text}"
    );
    assert_eq!(text.matches("File too large").count(), 1, "{text}");
    assert!(hidden_files(&out).is_empty(), "{:?}", hidden_files(&out));
    assert!(!Dataset::open(&out).unwrap().meta().is_complete());
    // Nothing was recorded, so the next rollout simply takes the folder.
    let o = rollout_with_file_limit(&out, None, &[]);
    assert!(o.status.success(), "{o:?}");
    let ds = Dataset::open(&out).unwrap();
    assert!(ds.meta().is_complete());
    assert_eq!(ds.load().episodes.len(), 200);
}

/// A World Models experiment small enough to train in seconds, with V's epochs long enough
/// to interrupt.
const TINY_RUN: &str = r#"
name = "tiny"
[rollout]
env = "Racer-v0"
env_config = { obs = "pixels", width = 16, height = 16 }
episodes = 2
num_envs = 2
[world_models]
seed = 1
[world_models.vae]
epochs = 10
batch_size = 16
model = { image_size = 16, z_size = 4, encoder_channels = [4, 8], decoder_dense = 16, decoder_channels = [4], decoder_kernels = [6, 6] }
[world_models.mdnrnn]
epochs = 1
batch_size = 4
seq_len = 8
model = { hidden = 8, mixtures = 2 }
[world_models.controller]
generations = 1
rollouts = 1
max_steps = 10
cmaes = { population = 4 }
[world_models.eval]
episodes = 2
max_steps = 10
"#;

fn start_run(config: &Path, out: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dreamgym"))
        .arg("run")
        .arg(config)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dreamgym")
}

/// Waits until V's checkpoint says `epochs` epochs are done.
fn wait_for_vae_epoch(out: &Path, epochs: u64) {
    let started = Instant::now();
    loop {
        let done = std::fs::read(out.join("vae.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["state"]["epochs_done"].as_u64())
            .unwrap_or(0);
        if done >= epochs {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "V never reached epoch {epochs}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigint_and_kill_in_a_run_resume_with_continuous_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.toml");
    std::fs::write(&config, TINY_RUN).unwrap();
    let out = dir.path().join("run");
    // Ctrl-C once V has saved an epoch: exit 130, told how to resume.
    let child = start_run(&config, &out);
    wait_for_vae_epoch(&out, 1);
    signal(&child, "-INT");
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("run again to resume"), "{err}");
    // kill -9 in a later epoch, mid-way: rows of the unfinished epoch may be on disk.
    let mut child = start_run(&config, &out);
    wait_for_vae_epoch(&out, 3);
    std::thread::sleep(Duration::from_millis(30));
    signal(&child, "-KILL");
    child.wait().unwrap();
    // The same command finishes the run from the checkpoints.
    let o = start_run(&config, &out).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("V: resuming after epoch"), "{err}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("collect: already done (2 episodes"),
        "{stdout}"
    );
    assert!(out.join("report.md").exists());
    // Metrics: every epoch once, in order, and steps counting on without a gap or repeat.
    let csv = std::fs::read_to_string(out.join("metrics/vae.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect();
    let steps: Vec<f64> = rows.iter().map(|r| r[1]).collect();
    assert_eq!(steps, (0..rows.len()).map(|s| s as f64).collect::<Vec<_>>());
    let per_epoch = rows.len() / 10;
    assert_eq!(rows.len(), per_epoch * 10, "{csv}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[0] as usize, i / per_epoch, "row {i}: {csv}");
    }
    // Done is done.
    let o = start_run(&config, &out).wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        stdout.contains("V: already done (epoch 10, loss"),
        "{stdout}"
    );
    assert!(stdout.contains("C: already done (generation 1"), "{stdout}");
    assert!(
        stdout.contains("random") && stdout.contains("(already done)"),
        "{stdout}"
    );
}
