//! The whole World Models pipeline on a tiny dataset and tiny models: every stage writes what
//! the next reads, resumes, refuses bad input, and is deterministic for a seed.

use dreamgym_agents::stages;
use dreamgym_agents::testing::{record, tiny_config};
use dreamgym_envs::Registry;
use dreamgym_world_model::VaeConfig;

#[test]
fn the_pipeline_runs_end_to_end_resumes_and_is_deterministic() {
    let root = tempfile::tempdir().unwrap();
    let (data, run) = (root.path().join("data"), root.path().to_path_buf());
    record(&data, 4, 30).unwrap();
    let registry = Registry::with_builtins();
    let mut cfg = tiny_config();

    let v = stages::train_vae(&cfg, &data, &run, false).unwrap();
    assert!(v.final_loss.is_finite() && v.steps > 0);
    let first = std::fs::read(run.join("vae.safetensors")).unwrap();
    // Done already: a second call resumes after the last epoch and takes no step.
    assert_eq!(
        stages::train_vae(&cfg, &data, &run, false).unwrap().steps,
        0
    );
    // Asking for more epochs resumes from the checkpoint instead of starting over.
    cfg.vae.epochs = 3;
    let more = stages::train_vae(&cfg, &data, &run, false).unwrap();
    assert_eq!(more.steps, v.steps / 2, "one more epoch only");
    cfg.vae.epochs = 2;

    assert_eq!(stages::encode(&cfg, &data, &run, false).unwrap(), 4 * 31);
    let m = stages::train_mdn(&cfg, &run, false).unwrap();
    assert!(m.final_loss.is_finite() && m.steps > 0);
    let c = stages::train_controller(&cfg, &data, &run, &registry, false).unwrap();
    assert_eq!(c.params.len(), (4 + 8) * 3 + 3);
    let e = stages::evaluate(&cfg, &data, &run, &registry, false).unwrap();
    assert_eq!(e.controller.len(), 3);
    assert_eq!(e.random.len(), 3);
    assert_eq!(e.dream.as_ref().map(|d| d.len()), Some(3));
    let report = stages::report(&cfg, &data, &run, Some(1.0)).unwrap();
    let text = std::fs::read_to_string(report).unwrap();
    for needle in [
        "reconstructions.png",
        "dream.png",
        "vae_loss.png",
        "mdnrnn_loss.png",
        "controller.png",
        "| random |",
    ] {
        assert!(text.contains(needle), "report lacks {needle}");
    }
    for f in [
        "reconstructions",
        "dream",
        "vae_loss",
        "mdnrnn_loss",
        "controller",
    ] {
        assert!(
            run.join("figures").join(format!("{f}.png")).exists(),
            "{f}.png"
        );
    }

    // Same seed, fresh folder: the same V bytes (2 epochs).
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path()).unwrap();
    stages::train_vae(&cfg, &data, other.path(), false).unwrap();
    let again = std::fs::read(other.path().join("vae.safetensors")).unwrap();
    assert_eq!(first, again, "same seed, same V");

    // The controller can also train in the dream.
    cfg.controller.in_dream = true;
    let d = stages::train_controller(&cfg, &data, &run, &registry, false).unwrap();
    assert!(d.in_dream && d.best_fitness.is_finite());

    // A V retrained with another z_size no longer fits M: a clear error, not a shape panic.
    cfg.vae.model.z_size = 5;
    stages::train_vae(&cfg, &data, &run, false).unwrap();
    let err = format!(
        "{:#}",
        stages::train_controller(&cfg, &data, &run, &registry, false).unwrap_err()
    );
    assert!(err.contains("z_size"), "{err}");
}

#[test]
fn stages_refuse_bad_input_with_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let (data, run) = (root.path().join("data"), root.path().to_path_buf());
    let cfg = tiny_config();
    let registry = Registry::with_builtins();
    // No dataset.
    let err = format!(
        "{:#}",
        stages::train_vae(&cfg, &data, &run, false).unwrap_err()
    );
    assert!(err.contains("cannot open dataset"), "{err}");
    // Stages out of order name what is missing.
    record(&data, 2, 12).unwrap();
    let err = format!("{:#}", stages::train_mdn(&cfg, &run, false).unwrap_err());
    assert!(err.contains("series.safetensors"), "{err}");
    let err = format!(
        "{:#}",
        stages::evaluate(&cfg, &data, &run, &registry, false).unwrap_err()
    );
    assert!(err.contains("vae"), "{err}");
    // V sized for other images.
    let mut big = tiny_config();
    big.vae.model = VaeConfig::default();
    let err = format!(
        "{:#}",
        stages::train_vae(&big, &data, &run, false).unwrap_err()
    );
    assert!(err.contains("[16, 16, 3]") && err.contains("64"), "{err}");
    // Episodes shorter than M's sequences.
    stages::train_vae(&cfg, &data, &run, false).unwrap();
    stages::encode(&cfg, &data, &run, false).unwrap();
    let mut long = tiny_config();
    long.mdnrnn.seq_len = 500;
    let err = format!("{:#}", stages::train_mdn(&long, &run, false).unwrap_err());
    assert!(err.contains("seq_len"), "{err}");
    // A damaged checkpoint is named, not a panic.
    let path = run.join("vae.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = format!(
        "{:#}",
        stages::encode(&cfg, &data, &run, false).unwrap_err()
    );
    assert!(err.contains("damaged"), "{err}");
    // Config ranges.
    let mut bad = tiny_config();
    bad.controller.workers = 0;
    assert!(bad.validate().is_err());
    bad = tiny_config();
    bad.device = "tpu".into();
    assert!(format!("{:#}", bad.validate().unwrap_err()).contains("unknown device"));
}
