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
