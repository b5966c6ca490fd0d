//! The `dreamgym` binary: commands work, data do not depend on the worker count, and bad input
//! gets a clear error (exit code 1, no panic trace).

use std::path::Path;
use std::process::{Command, Output};

fn dreamgym(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dreamgym"))
        .args(args)
        .output()
        .expect("run dreamgym")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_clean_error(o: &Output, needle: &str) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(needle), "expected `{needle}` in: {t}");
    assert!(!t.contains("panicked"), "{t}");
}

/// Name and CRC-32 of every chunk file.
fn chunk_digests(dir: &Path) -> Vec<(String, u32)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("chunk-"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                crc32fast::hash(&std::fs::read(e.path()).unwrap()),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn envs_lists_every_builtin_with_spaces() {
    let o = dreamgym(&["envs"]);
    assert!(o.status.success());
    let t = text(&o);
    for id in ["CartPole-v0", "Reacher-v0", "Racer-v0", "Discrete(2)"] {
        assert!(t.contains(id), "{t}");
    }
}

#[test]
fn rollout_data_are_identical_on_one_and_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for workers in ["1", "2"] {
        let out = dir.path().join(format!("w{workers}"));
        let o = dreamgym(&[
            "rollout",
            "--env",
            "Reacher-v0",
            "--episodes",
            "12",
            "--num-envs",
            "4",
            "--workers",
            workers,
            "--seed",
            "5",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        outputs.push(chunk_digests(&out));
    }
    assert!(!outputs[0].is_empty());
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn inspect_summarizes_and_names_a_damaged_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cp");
    let o = dreamgym(&[
        "rollout",
        "--env",
        "CartPole-v0",
        "--episodes",
        "130",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = dreamgym(&["inspect", out.to_str().unwrap()]);
    let t = text(&o);
    assert!(t.contains("episodes     130"), "{t}");
    assert!(t.contains("0 damaged"), "{t}");
    let victim = out.join("chunk-000001.safetensors");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() - 100]).unwrap();
    // Damage is an error (exit 1) unless accepted; the summary is printed either way.
    let o = dreamgym(&["inspect", out.to_str().unwrap()]);
    let t = text(&o);
    assert_clean_error(&o, "--allow-damaged");
    assert!(
        t.contains("1 damaged") && t.contains("chunk-000001.safetensors"),
        "{t}"
    );
    assert!(t.contains("episodes     66"), "{t}");
    let o = dreamgym(&["inspect", "--allow-damaged", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let out = out.to_str().unwrap();
    assert_clean_error(
        &dreamgym(&["rollout", "--env", "Nope-v0", "--out", out]),
        "CartPole-v0",
    );
    assert_clean_error(
        &dreamgym(&[
            "rollout",
            "--env",
            "CartPole-v0",
            "--set",
            "force_mag=-3",
            "--out",
            out,
        ]),
        "force_mag",
    );
    assert_clean_error(
        &dreamgym(&[
            "rollout",
            "--env",
            "CartPole-v0",
            "--set",
            "forse=3",
            "--out",
            out,
        ]),
        "unknown field",
    );
    assert_clean_error(
        &dreamgym(&[
            "rollout",
            "--env",
            "CartPole-v0",
            "--policy",
            "genius",
            "--out",
            out,
        ]),
        "unknown policy",
    );
    assert_clean_error(
        &dreamgym(&[
            "rollout",
            "--env",
            "CartPole-v0",
            "--workers",
            "0",
            "--out",
            out,
        ]),
        "workers",
    );
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let below = file.join("out");
    assert_clean_error(
        &dreamgym(&[
            "rollout",
            "--env",
            "CartPole-v0",
            "--episodes",
            "2",
            "--out",
            below.to_str().unwrap(),
        ]),
        "cannot create folder",
    );
    assert_clean_error(
        &dreamgym(&["inspect", dir.path().join("missing").to_str().unwrap()]),
        "does not exist",
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[rollout]\nepisodes = \"many\"\n").unwrap();
    assert_clean_error(
        &dreamgym(&["run", bad.to_str().unwrap()]),
        "not a valid experiment config",
    );
    assert_clean_error(
        &dreamgym(&["run", dir.path().join("none.toml").to_str().unwrap()]),
        "cannot read experiment config",
    );
    // Settings a command fixes itself are refused, not silently replaced; pairs need a
    // language env.
    let pairs = ["pairs", "--model", "m", "--out", out];
    for (extra, needle) in [
        (&["--set", "mode=control"], "language mode"),
        (
            &["--env", "CartPole-v0"],
            "pairs need an env with a language mode",
        ),
    ] {
        assert_clean_error(&dreamgym(&[&pairs[..], &extra[..]].concat()), needle);
    }
    assert_clean_error(
        &dreamgym(&[
            "eval-language",
            "--policy",
            "expert",
            "--set",
            "split=train",
        ]),
        "the splits come from --split",
    );
}

#[test]
fn check_passes_on_builtins() {
    let o = dreamgym(&["check"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).matches(": ok").count(), 4);
}

#[test]
fn run_executes_an_experiment_file_and_keeps_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("exp.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &cfg,
        format!(
            "name = \"t\"\n[rollout]\nenv = \"Racer-v0\"\nepisodes = 2\nnum_envs = 2\nout = {:?}\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let o = dreamgym(&["run", cfg.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("episodes     2"), "{t}");
    // The run folder is the dataset's parent; the resolved config is kept there.
    assert!(dir.path().join("experiment.toml").exists());
    assert!(data.join("dataset.json").exists());
}

#[test]
fn pixel_rollouts_export_to_gifs_and_state_datasets_say_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("px");
    let o = dreamgym(&[
        "rollout",
        "--env",
        "CartPole-v0",
        "--obs",
        "pixels",
        "--set",
        "width=32",
        "--set",
        "height=24",
        "--episodes",
        "3",
        "--num-envs",
        "2",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let gif_path = dir.path().join("ep.gif");
    let o = dreamgym(&[
        "export-gif",
        data.to_str().unwrap(),
        "--episode",
        "1",
        gif_path.to_str().unwrap(),
        "--scale",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let episodes = dreamgym::envs::recording::Dataset::open(&data)
        .unwrap()
        .load()
        .episodes;
    let mut decoder = gif::DecodeOptions::new();
    decoder.set_color_output(gif::ColorOutput::RGBA);
    let mut reader = decoder
        .read_info(std::fs::File::open(&gif_path).unwrap())
        .unwrap();
    assert_eq!((reader.width(), reader.height()), (64, 48));
    let mut frames = 0;
    while reader.read_next_frame().unwrap().is_some() {
        frames += 1;
    }
    assert_eq!(frames, episodes[1].observations.len());
    // Out of range, and a dataset without pixels.
    assert_clean_error(
        &dreamgym(&[
            "export-gif",
            data.to_str().unwrap(),
            "--episode",
            "9",
            gif_path.to_str().unwrap(),
        ]),
        "out of range",
    );
    let state = dir.path().join("state");
    assert!(
        dreamgym(&[
            "rollout",
            "--env",
            "CartPole-v0",
            "--episodes",
            "1",
            "--out",
            state.to_str().unwrap()
        ])
        .status
        .success()
    );
    assert_clean_error(
        &dreamgym(&[
            "export-gif",
            state.to_str().unwrap(),
            gif_path.to_str().unwrap(),
        ]),
        "--obs pixels",
    );
}

#[test]
fn render_writes_the_agents_picture_as_png() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.png");
    let o = dreamgym(&[
        "render",
        "--env",
        "Reacher-v0",
        "--width",
        "48",
        "--height",
        "40",
        "--steps",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()))
        .read_info()
        .unwrap();
    assert_eq!((reader.info().width, reader.info().height), (48, 40));
    assert_clean_error(
        &dreamgym(&[
            "render",
            "--env",
            "Reacher-v0",
            "--width",
            "0",
            "--out",
            out.to_str().unwrap(),
        ]),
        "image size",
    );
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn preference_commands_never_write_over_other_folders() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (model, pairs) = (path("model"), path("pairs"));
    dreamgym_agents::testing::tiny_language_model(0)
        .unwrap()
        .save(
            &dreamgym_agents::RunDir::new(&model)
                .checkpoint(dreamgym_agents::language::LM_CHECKPOINT),
            None,
            serde_json::json!({}),
        )
        .unwrap();
    let o = dreamgym(&[
        "pairs",
        "--model",
        &model,
        "--out",
        &pairs,
        "--count",
        "2",
        "--max-turns",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // A person's labels, the last one written by an editor that drops the final newline.
    let labels = dir.path().join("pairs/labels.jsonl");
    std::fs::write(
        &labels,
        "{\"pair\":\"p000000\",\"labeler\":\"alice\",\"choice\":\"a\",\"left\":null,\"seconds\":1.0,\"timestamp\":1.0}\n\
         {\"pair\":\"p000001\",\"labeler\":\"alice\",\"choice\":\"b\",\"left\":null,\"seconds\":1.0,\"timestamp\":2.0}",
    )
    .unwrap();
    let o = dreamgym(&["labels", "stats", &pairs]);
    assert!(text(&o).contains("2 labels in effect"), "{}", text(&o));
    assert!(!text(&o).contains("torn"), "{}", text(&o));
    // A `pairs` run killed mid-write leaves a torn last pair: read-only commands say so, leave
    // it out, and leave the file as it is (the next `pairs` run into the folder repairs it).
    let pairs_file = dir.path().join("pairs/pairs.jsonl");
    let whole = std::fs::read(&pairs_file).unwrap();
    let mut torn = whole.clone();
    torn.extend_from_slice(b"{\"id\":\"p000002\",\"se");
    std::fs::write(&pairs_file, &torn).unwrap();
    let o = dreamgym(&["labels", "stats", &pairs]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 labels in effect"), "{}", text(&o));
    assert!(
        text(&o).contains("ends in a torn line (19 bytes"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&pairs_file).unwrap(), torn);
    std::fs::write(&pairs_file, &whole).unwrap();
    // Alice's labels exported to TRL's format and imported as Bob's: once, however often the
    // file is imported; a file that contradicts itself is refused whole.
    let o = dreamgym(&["labels", "export", &pairs, "--format", "trl"]);
    assert!(o.status.success(), "{}", text(&o));
    let trl = String::from_utf8(o.stdout).unwrap();
    assert_eq!(trl.lines().count(), 2, "{trl}");
    let trl_file = path("prefs.jsonl");
    std::fs::write(&trl_file, format!("{trl}{}", trl.lines().next().unwrap())).unwrap();
    let import = ["labels", "import", &pairs, &trl_file, "--labeler", "bob"];
    let o = dreamgym(&import);
    assert!(text(&o).contains("imported 2 labels"), "{}", text(&o));
    assert!(text(&o).contains("1 lines repeat"), "{}", text(&o));
    let logged = std::fs::read_to_string(&labels).unwrap();
    let o = dreamgym(&import);
    assert!(text(&o).contains("imported 0 labels"), "{}", text(&o));
    assert!(
        text(&o).contains("2 were already labeled so"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(&labels).unwrap(), logged);
    let mut flipped: serde_json::Value = serde_json::from_str(trl.lines().next().unwrap()).unwrap();
    let chosen = flipped["chosen"].take();
    flipped["chosen"] = flipped["rejected"].take();
    flipped["rejected"] = chosen;
    std::fs::write(&trl_file, format!("{trl}{flipped}\n")).unwrap();
    assert_clean_error(&dreamgym(&import), "lines 1 and 3 prefer opposite sides");
    assert_eq!(std::fs::read_to_string(&labels).unwrap(), logged);
    // A byte-order mark is read past.
    std::fs::write(&trl_file, format!("\u{feff}{trl}")).unwrap();
    let o = dreamgym(&import);
    assert!(text(&o).contains("imported 0 labels"), "{}", text(&o));
    // The synthetic labeler's name is not a person's.
    let as_synth = [
        "labels",
        "import",
        &pairs,
        &trl_file,
        "--labeler",
        "synthetic",
    ];
    assert_clean_error(&dreamgym(&as_synth), "synthetic labeler's name");
    // A file none of whose lines matches a pair is an error, not "0 imported"; so is a line
    // that prefers an answer to itself.
    let line = |chosen: &str, rejected: &str| serde_json::json!({ "prompt": "elsewhere", "chosen": chosen, "rejected": rejected });
    std::fs::write(&trl_file, format!("{}\n", line("push", "done"))).unwrap();
    assert_clean_error(&dreamgym(&import), "none of its 1 lines matches a pair");
    std::fs::write(&trl_file, format!("{}\n", line("done", "done"))).unwrap();
    assert_clean_error(&dreamgym(&import), "the same: it prefers nothing");
    assert_eq!(std::fs::read_to_string(&labels).unwrap(), logged);
    let o = dreamgym(&["labels", "stats", &pairs]);
    assert!(text(&o).contains("4 labels in effect"), "{}", text(&o));
    let (model_files, pairs_files) = (snapshot(Path::new(&model)), snapshot(Path::new(&pairs)));

    // rlhf into the start model's folder, dpo into the pairs folder: refused, nothing written.
    let quick = ["--eval-episodes", "0", "--steps", "1"];
    let mut args = vec![
        "rlhf", "--model", &model, "--pairs", &pairs, "--out", &model,
    ];
    args.extend(["--rm-steps", "1", "--prompts", "1", "--k", "2"]);
    args.extend(quick);
    assert_clean_error(&dreamgym(&args), "already holds");
    let mut args = vec!["dpo", "--model", &model, "--pairs", &pairs, "--out", &pairs];
    args.extend(quick);
    assert_clean_error(&dreamgym(&args), "already holds");
    // The same pairs folder twice would count its labels twice.
    let mut args = vec![
        "dpo", "--model", &model, "--pairs", &pairs, "--pairs", &pairs,
    ];
    let dpo_out = path("dpo");
    args.extend(["--out", &dpo_out]);
    args.extend(quick);
    assert_clean_error(&dreamgym(&args), "same folder twice");
    // A learning rate that would leave NaN weights is refused before anything trains.
    let mut args = vec![
        "dpo", "--model", &model, "--pairs", &pairs, "--out", &dpo_out,
    ];
    args.extend(["--lr", "1e30"]);
    args.extend(quick);
    assert_clean_error(&dreamgym(&args), "--lr must be in (0, 1]");
    assert!(!Path::new(&dpo_out).exists());
    assert_eq!(snapshot(Path::new(&model)), model_files);
    assert_eq!(snapshot(Path::new(&pairs)), pairs_files);

    // A run of its own, in a new folder: written; run again, refused by its own checkpoint
    // only when the training differs.
    let mut args = vec![
        "dpo", "--model", &model, "--pairs", &pairs, "--out", &dpo_out,
    ];
    args.extend(["--batch-size", "2"]);
    args.extend(quick);
    let o = dreamgym(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(Path::new(&dpo_out).join("lm.safetensors").exists());
    let o = dreamgym(&args);
    assert!(o.status.success(), "{}", text(&o));
    // The verifier needs prompts, not labels.
    std::fs::remove_file(&labels).unwrap();
    let rloo = path("rloo");
    let mut args = vec!["rlhf", "--model", &model, "--pairs", &pairs, "--out", &rloo];
    args.extend(["--reward", "verifier", "--prompts", "1", "--k", "2"]);
    args.extend(quick);
    let o = dreamgym(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(Path::new(&rloo).join("lm.safetensors").exists());
    // rlhf does not resume: its own earlier run is named as such.
    assert_clean_error(&dreamgym(&args), "holds an earlier `dreamgym rlhf` run");
    // A KL weight RLOO cannot take is refused before the reward model trains.
    let rloo_beta = path("rloo-beta");
    let mut bad = args.clone();
    bad[6] = rloo_beta.as_str();
    bad.extend(["--beta", "1e308"]);
    assert_clean_error(&dreamgym(&bad), "--beta must be in [0, 1000]");
    assert!(!Path::new(&rloo_beta).exists());
    // Folders from another split of the same env go together; from an env configured
    // otherwise they do not: the models are evaluated in one configuration.
    let other = path("pairs-other");
    std::fs::create_dir(&other).unwrap();
    for f in ["pairs.json", "pairs.jsonl"] {
        std::fs::copy(dir.path().join("pairs").join(f), Path::new(&other).join(f)).unwrap();
    }
    let other_meta = Path::new(&other).join("pairs.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&other_meta).unwrap()).unwrap();
    meta["env_config"]["max_commands"] = 1.into();
    std::fs::write(&other_meta, meta.to_string()).unwrap();
    let mixed = path("mixed");
    let mut args = vec![
        "rlhf", "--model", &model, "--pairs", &pairs, "--pairs", &other, "--out", &mixed,
    ];
    args.extend(quick);
    assert_clean_error(&dreamgym(&args), "folders may differ in their split only");
    assert!(!Path::new(&mixed).exists());
    // Pairs that say they come from an env that is not a language env (an edited pairs.json)
    // are refused before anything trains.
    let meta_path = dir.path().join("pairs/pairs.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["env"] = "CartPole-v0".into();
    meta["env_config"] = serde_json::json!({});
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let out = path("cartpole");
    let mut args = vec!["dpo", "--model", &model, "--pairs", &pairs, "--out", &out];
    args.extend(quick);
    assert_clean_error(&dreamgym(&args), "CartPole-v0, which is not a language env");
    args[0] = "rlhf";
    args.extend(["--reward", "verifier"]);
    assert_clean_error(&dreamgym(&args), "CartPole-v0, which is not a language env");
    assert!(!Path::new(&out).exists());
}
