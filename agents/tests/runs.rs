//! Runs and datasets that never lie: a changed config is refused, continued or redone as the
//! user says, an interrupted collection is resumed rather than trained on, `--append` adds new
//! episodes of the same env only, C resumes exactly, and one writer holds a folder at a time.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use dreamgym_agents::testing::{record, tiny_config};
use dreamgym_agents::world_models::{Stage, run_world_models};
use dreamgym_agents::{
    CollectConfig, Experiment, OnChange, Part, Progress, RunDir, collect, merge, parse_experiment,
    prepare_run, run_experiment,
};
use dreamgym_envs::Registry;
use dreamgym_envs::recording::Dataset;

/// Asks to stop once `limit` units of work are done (Ctrl-C at a known moment), and keeps the
/// notes it was given.
struct StopAfter {
    done: AtomicU64,
    limit: u64,
    notes: std::sync::Mutex<Vec<String>>,
}

impl StopAfter {
    fn new(limit: u64) -> Self {
        Self {
            done: AtomicU64::new(0),
            limit,
            notes: Default::default(),
        }
    }
}

impl Progress for StopAfter {
    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::SeqCst);
    }
    fn note(&self, text: &str) {
        self.notes.lock().unwrap().push(text.to_string());
    }
    fn done(&self, text: &str) {
        self.note(text);
    }
    fn interrupted(&self) -> bool {
        self.done.load(Ordering::SeqCst) >= self.limit
    }
}

/// A collection-only experiment on CartPole (fast) in `out`.
fn cartpole(out: &Path, episodes: usize) -> Experiment {
    let text = format!(
        "name = \"t\"\nout = {:?}\n[rollout]\nenv = \"CartPole-v0\"\nepisodes = {episodes}\n\
         num_envs = 4\n",
        out.display().to_string()
    );
    parse_experiment(&text, "test").unwrap()
}

fn episode_seeds(dir: &Path) -> Vec<u64> {
    let report = Dataset::open(dir).unwrap().load();
    assert!(report.damaged.is_empty());
    report.episodes.iter().map(|e| e.seed).collect()
}

/// Every visible file of a folder, by name, with its bytes.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .map(|name| (name.clone(), std::fs::read(dir.join(&name)).unwrap()))
        .collect()
}

#[test]
fn shards_of_a_rollout_merge_into_the_bytes_one_process_records() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::with_builtins();
    let whole = CollectConfig {
        env: "CartPole-v0".into(),
        episodes: 70,
        num_envs: 3,
        workers: 2,
        seed: 5,
        ..Default::default()
    };
    let whole_dir = dir.path().join("whole");
    collect(&registry, &whole, &whole_dir, &()).unwrap();
    // Episode k starts from seed + k, in order, whichever env ran it.
    assert_eq!(episode_seeds(&whole_dir), (5..75).collect::<Vec<u64>>());
    // Three shards with other worker counts (the first split across chunk boundaries
    // differently from the whole), named out of order.
    let mut shards = Vec::new();
    for (first, episodes, workers) in [(35u64, 35usize, 1usize), (0, 30, 3), (30, 5, 2)] {
        let shard = CollectConfig {
            first_episode: first,
            episodes,
            workers,
            ..whole.clone()
        };
        let path = dir.path().join(format!("shard-{first}"));
        collect(&registry, &shard, &path, &()).unwrap();
        shards.push(path);
    }
    let merged = dir.path().join("merged");
    let summary = merge(&shards, &merged).unwrap();
    assert_eq!((summary.episodes, summary.first_episode), (70, 0));
    let (a, b) = (files(&whole_dir), files(&merged));
    assert!(a.len() >= 3, "{:?}", a.keys());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs");
    }

    // Shards that do not fit together are refused, and nothing is written.
    let refused = |shards: &[std::path::PathBuf], what: &str| {
        let out = dir.path().join(format!("refused-{what}"));
        let e = format!("{:#}", merge(shards, &out).unwrap_err());
        assert!(e.contains(what), "{e}");
        assert!(!out.exists());
    };
    refused(&[shards[1].clone(), shards[0].clone()], "gap");
    let overlap = dir.path().join("overlap");
    let o = CollectConfig {
        first_episode: 25,
        episodes: 10,
        ..whole.clone()
    };
    collect(&registry, &o, &overlap, &()).unwrap();
    refused(&[shards[1].clone(), overlap], "overlap");
    let other = dir.path().join("other-seed");
    let o = CollectConfig {
        seed: 6,
        first_episode: 30,
        episodes: 5,
        ..whole.clone()
    };
    collect(&registry, &o, &other, &()).unwrap();
    refused(&[shards[1].clone(), other], "seed differs");
    // The output must be new.
    let e = format!("{:#}", merge(&shards, &whole_dir).unwrap_err());
    assert!(e.contains("already holds a dataset"), "{e}");
}

#[test]
fn an_interrupted_collection_is_marked_unfinished_and_resumed_not_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::with_builtins();
    let exp = cartpole(dir.path(), 40);
    let run = RunDir::new(dir.path());
    // Ctrl-C after 12 episodes.
    let stop = StopAfter::new(12);
    let err = run_experiment(&exp, &registry, OnChange::Ask, &stop).unwrap_err();
    assert!(
        err.downcast_ref::<dreamgym_agents::Interrupted>().is_some(),
        "{err:#}"
    );
    let ds = Dataset::open(run.data()).unwrap();
    assert!(!ds.meta().is_complete());
    let partial = ds.load().episodes.len();
    assert!((12..40).contains(&partial), "{partial}");
    // A World Models stage refuses the unfinished dataset.
    let err = match dreamgym_agents::world_models::PixelData::load(&run.data(), &()) {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("an unfinished dataset was loaded for training"),
    };
    assert!(err.contains("did not finish"), "{err}");
    // The same experiment again records the rest of the same collection's episodes; stopped
    // once more, and run a third time, it finishes them.
    let out = run_experiment(&exp, &registry, OnChange::Ask, &StopAfter::new(10));
    assert!(out.is_err());
    let again = StopAfter::new(u64::MAX);
    let out = run_experiment(&exp, &registry, OnChange::Ask, &again).unwrap();
    let rest = out.collect.unwrap().episodes;
    assert!(rest < 40 - partial, "{rest}");
    let ds = Dataset::open(run.data()).unwrap();
    assert!(ds.meta().is_complete(), "{:?}", ds.meta().collections);
    assert_eq!(ds.meta().collections.len(), 3);
    let seeds = episode_seeds(&run.data());
    assert_eq!(seeds.len(), 40);
    assert_eq!(seeds.iter().collect::<HashSet<_>>().len(), 40, "{seeds:?}");
    // The episodes are those a collection that never stopped records, in the same order.
    let clean = tempfile::tempdir().unwrap();
    run_experiment(&cartpole(clean.path(), 40), &registry, OnChange::Ask, &()).unwrap();
    let episodes = |dir: &Path| -> Vec<(u64, Vec<f64>)> {
        Dataset::open(dir)
            .unwrap()
            .load()
            .episodes
            .into_iter()
            .map(|e| (e.seed, e.rewards))
            .collect()
    };
    assert_eq!(
        episodes(&run.data()),
        episodes(&RunDir::new(clean.path()).data())
    );
    // Once complete it is reused, not recorded again.
    let out = run_experiment(&exp, &registry, OnChange::Ask, &again).unwrap();
    assert!(out.collect.is_none());
    let notes = again.notes.lock().unwrap().join("\n");
    assert!(notes.contains("already done (40 episodes"), "{notes}");
    // Appending after it derives the same new seeds as after the uninterrupted one.
    let more = |root: &Path| {
        let append = CollectConfig {
            episodes: 2,
            append: true,
            ..cartpole(root, 40).rollout.clone()
        };
        let data = RunDir::new(root).data();
        collect(&registry, &append, &data, &()).unwrap();
        episode_seeds(&data)[40..].to_vec()
    };
    assert_eq!(more(dir.path()), more(clean.path()));
}

#[test]
fn a_changed_config_is_refused_continued_or_redone_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::with_builtins();
    let run = RunDir::new(dir.path());
    run_experiment(&cartpole(dir.path(), 8), &registry, OnChange::Ask, &()).unwrap();
    // More episodes: refused without a flag, the difference named.
    let more = cartpole(dir.path(), 12);
    let err = format!(
        "{:#}",
        run_experiment(&more, &registry, OnChange::Ask, &()).unwrap_err()
    );
    assert!(
        err.contains("rollout.episodes: 8 → 12") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(episode_seeds(&run.data()).len(), 8);
    // --resume tops the dataset up.
    run_experiment(&more, &registry, OnChange::Resume, &()).unwrap();
    assert_eq!(episode_seeds(&run.data()).len(), 12);
    // Another env config makes the dataset stale: --resume refuses, naming the field...
    let mut other = cartpole(dir.path(), 12);
    other
        .rollout
        .env_config
        .insert("force_mag".into(), toml::Value::Float(5.0));
    let err = format!(
        "{:#}",
        run_experiment(&other, &registry, OnChange::Resume, &()).unwrap_err()
    );
    assert!(
        err.contains("rollout.env_config.force_mag") && err.contains("--force"),
        "{err}"
    );
    // ...the folder still describes the data it holds...
    let saved = std::fs::read_to_string(run.experiment()).unwrap();
    assert!(!saved.contains("force_mag"), "{saved}");
    // ...and --force discards the dataset and records it again with the new config.
    run_experiment(&other, &registry, OnChange::Force, &()).unwrap();
    let meta = Dataset::open(run.data()).unwrap().meta().clone();
    assert_eq!(meta.env_config["force_mag"], 5.0);
    assert_eq!(meta.collections.len(), 1);
    // Changes nothing depends on (worker threads) pass without a flag.
    let mut workers = other.clone();
    workers.rollout.workers = 1;
    run_experiment(&workers, &registry, OnChange::Ask, &()).unwrap();
}

/// A trained tiny World Models run in `root` with the experiment that made it saved beside it.
fn tiny_experiment(root: &Path) -> (RunDir, Experiment) {
    dreamgym_agents::testing::tiny_run(root).unwrap();
    let run = RunDir::new(root);
    let mut exp = parse_experiment(
        "name = \"t\"\n[rollout]\nenv = \"Racer-v0\"\nepisodes = 4\n\
         env_config = { obs = \"pixels\", width = 16, height = 16 }\n",
        "test",
    )
    .unwrap();
    exp.world_models = Some(tiny_config());
    std::fs::write(run.experiment(), toml::to_string(&exp).unwrap()).unwrap();
    (run, exp)
}

#[test]
fn force_discards_the_stage_that_changed_and_everything_after_it_only() {
    let root = tempfile::tempdir().unwrap();
    let (run, exp) = tiny_experiment(root.path());
    // M's architecture changes: V and the data stay, M and C go.
    let mut changed = exp.clone();
    changed.world_models.as_mut().unwrap().mdnrnn.model.hidden = 6;
    let err = format!(
        "{:#}",
        prepare_run(&changed, &run, OnChange::Resume, &()).unwrap_err()
    );
    assert!(err.contains("mdnrnn.model.hidden"), "{err}");
    assert!(run.file("mdnrnn.safetensors").exists());
    let part = prepare_run(&changed, &run, OnChange::Force, &()).unwrap();
    assert_eq!(part, Some(Part::Mdn));
    for gone in [
        "mdnrnn.safetensors",
        "controller.json",
        "metrics/mdnrnn.csv",
    ] {
        assert!(!run.file(gone).exists(), "{gone} survived --force");
    }
    for kept in ["vae.safetensors", "series.safetensors", "data/dataset.json"] {
        assert!(run.file(kept).exists(), "{kept} was discarded");
    }
}

#[test]
fn iterate_settings_bind_only_once_a_round_exists_and_more_rounds_continue() {
    let root = tempfile::tempdir().unwrap();
    let (run, exp) = tiny_experiment(root.path());
    let with = |f: &dyn Fn(&mut dreamgym_agents::WorldModelsConfig)| {
        let mut e = exp.clone();
        f(e.world_models.as_mut().unwrap());
        e
    };
    // No round made yet: the rounds' settings bind nothing.
    let noise = with(&|w| w.iterate.noise = dreamgym_agents::world_models::ActionNoise::Level(0.5));
    assert_eq!(prepare_run(&noise, &run, OnChange::Ask, &()).unwrap(), None);
    // More rounds: more work, which --resume continues.
    let more = with(&|w| w.iterate.rounds = 2);
    let err = format!(
        "{:#}",
        prepare_run(&more, &run, OnChange::Ask, &()).unwrap_err()
    );
    assert!(err.contains("iterate.rounds: 0 → 2"), "{err}");
    prepare_run(&more, &run, OnChange::Resume, &()).unwrap();
    // Once a round exists, another noise level makes the rounds stale (and only them).
    std::fs::create_dir_all(run.file("rounds/1")).unwrap();
    std::fs::write(run.file("rounds.json"), "[]").unwrap();
    // Choosing a C among the rounds only adds the last C's measurement: --resume continues
    // and the rounds stay.
    let choose = with(&|w| {
        w.iterate.rounds = 2;
        w.iterate.choose_best = true;
    });
    let err = format!(
        "{:#}",
        prepare_run(&choose, &run, OnChange::Ask, &()).unwrap_err()
    );
    assert!(
        err.contains("iterate.choose_best") && err.contains("--resume continues"),
        "{err}"
    );
    prepare_run(&choose, &run, OnChange::Resume, &()).unwrap();
    assert!(run.file("rounds/1").exists() && run.file("rounds.json").exists());
    let err = format!(
        "{:#}",
        prepare_run(&noise, &run, OnChange::Resume, &()).unwrap_err()
    );
    assert!(
        err.contains("iterate.noise") && err.contains("the rounds"),
        "{err}"
    );
    assert_eq!(
        prepare_run(&noise, &run, OnChange::Force, &()).unwrap(),
        Some(Part::Rounds)
    );
    assert!(!run.file("rounds").exists() && !run.file("rounds.json").exists());
    for kept in ["vae.safetensors", "mdnrnn.safetensors", "controller.json"] {
        assert!(run.file(kept).exists(), "{kept} was discarded");
    }
}

#[test]
fn a_model_of_another_architecture_is_never_silently_overwritten() {
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::new(root.path());
    record(&run.data(), 4, 30).unwrap();
    let mut cfg = tiny_config();
    let registry = Registry::with_builtins();
    run_world_models(&cfg, &run, &registry, Stage::Vae, &(), None).unwrap();
    let before = std::fs::read(run.file("vae.safetensors")).unwrap();
    cfg.vae.model.z_size = 5;
    let err = run_world_models(&cfg, &run, &registry, Stage::Vae, &(), None).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("z_size: 4 → 5") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.file("vae.safetensors")).unwrap(), before);
}

#[test]
fn a_stage_whose_dataset_changed_is_stale_and_retrained() {
    let root = tempfile::tempdir().unwrap();
    let run = RunDir::new(root.path());
    record(&run.data(), 4, 30).unwrap();
    let cfg = tiny_config();
    let registry = Registry::with_builtins();
    let p = StopAfter::new(u64::MAX);
    let out = run_world_models(&cfg, &run, &registry, Stage::Vae, &p, None).unwrap();
    assert!(out.vae.unwrap().steps > 0);
    let out = run_world_models(&cfg, &run, &registry, Stage::Vae, &p, None).unwrap();
    assert_eq!(out.vae.unwrap().steps, 0);
    assert!(
        p.notes
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.contains("already done (epoch 2, loss"))
    );
    // A chunk is added: V was trained on other data.
    let extra = root.path().join("extra");
    record(&extra, 2, 30).unwrap();
    std::fs::copy(
        extra.join("chunk-000000.safetensors"),
        run.data().join("chunk-000001.safetensors"),
    )
    .unwrap();
    let out = run_world_models(&cfg, &run, &registry, Stage::Vae, &p, None).unwrap();
    let v = out.vae.unwrap();
    assert_eq!(v.resumed_from, 0);
    assert!(v.steps > 0);
    let notes = p.notes.lock().unwrap().join("\n");
    assert!(
        notes.contains("the dataset changed since V was trained"),
        "{notes}"
    );
}

#[test]
fn c_interrupted_mid_training_resumes_to_the_same_controller() {
    let mut cfg = tiny_config();
    cfg.controller.generations = 4;
    let registry = Registry::with_builtins();
    let straight = tempfile::tempdir().unwrap();
    let resumed = tempfile::tempdir().unwrap();
    let runs = [RunDir::new(straight.path()), RunDir::new(resumed.path())];
    for run in &runs {
        record(&run.data(), 4, 30).unwrap();
        for s in [Stage::Vae, Stage::Mdn] {
            run_world_models(&cfg, run, &registry, s, &(), None).unwrap();
        }
    }
    run_world_models(&cfg, &runs[0], &registry, Stage::Controller, &(), None).unwrap();
    // Ctrl-C during the third generation.
    let stop = StopAfter::new(2);
    let err =
        run_world_models(&cfg, &runs[1], &registry, Stage::Controller, &stop, None).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("saved after generation 2"), "{msg}");
    assert!(!runs[1].file("controller.json").exists());
    let p = StopAfter::new(u64::MAX);
    run_world_models(&cfg, &runs[1], &registry, Stage::Controller, &p, None).unwrap();
    assert!(
        p.notes
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.contains("resuming after generation 2")),
        "{:?}",
        p.notes
    );
    for file in ["controller.json", "metrics/controller.csv"] {
        assert_eq!(
            std::fs::read(runs[0].file(file)).unwrap(),
            std::fs::read(runs[1].file(file)).unwrap(),
            "{file} differs after a resume"
        );
    }
    // Done is done: a third call trains nothing and says so.
    let p = StopAfter::new(u64::MAX);
    let out = run_world_models(&cfg, &runs[1], &registry, Stage::Controller, &p, None).unwrap();
    assert!(out.controller.is_some());
    let notes = p.notes.lock().unwrap().join("\n");
    assert!(notes.contains("C: already done (generation 4"), "{notes}");
}

#[test]
fn c_is_the_cma_es_mean_that_scored_best_and_resumes_to_the_same_choice() {
    let mut cfg = tiny_config();
    cfg.controller.in_dream = true;
    cfg.controller.generations = 5;
    cfg.controller.select_every = 2;
    cfg.controller.select_rollouts = 3;
    let registry = Registry::with_builtins();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let runs: Vec<RunDir> = dirs.iter().map(|d| RunDir::new(d.path())).collect();
    for run in &runs {
        record(&run.data(), 4, 30).unwrap();
        for s in [Stage::Vae, Stage::Mdn] {
            run_world_models(&cfg, run, &registry, s, &(), None).unwrap();
        }
    }
    run_world_models(&cfg, &runs[0], &registry, Stage::Controller, &(), None).unwrap();
    // Stopped before the fourth generation (after one selection), then resumed.
    let stop = StopAfter::new(3);
    run_world_models(&cfg, &runs[1], &registry, Stage::Controller, &stop, None).unwrap_err();
    run_world_models(&cfg, &runs[1], &registry, Stage::Controller, &(), None).unwrap();
    // With one worker instead of two: the same batches, the same C.
    let mut one = cfg.clone();
    one.controller.workers = 1;
    run_world_models(&one, &runs[2], &registry, Stage::Controller, &(), None).unwrap();
    for run in &runs[1..] {
        for file in ["controller.json", "metrics/controller_selection.csv"] {
            assert_eq!(
                std::fs::read(runs[0].file(file)).unwrap(),
                std::fs::read(run.file(file)).unwrap(),
                "{file} differs"
            );
        }
    }
    // The mean was scored after generations 2, 4 and the last (5); C is the best of them.
    let text = std::fs::read_to_string(runs[0].file("metrics/controller_selection.csv")).unwrap();
    let rows: Vec<(f64, f64)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let (g, v) = l.split_once(',').unwrap();
            (g.parse().unwrap(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1.0, 3.0, 4.0]
    );
    let best = rows
        .iter()
        .cloned()
        .fold((0.0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].file("controller.json")).unwrap()).unwrap();
    assert_eq!(c["selected_after"].as_u64(), Some(best.0 as u64 + 1));
    assert_eq!(c["best_fitness"].as_f64(), Some(best.1));
    // The two settings go together.
    cfg.controller.select_rollouts = 0;
    let err = format!("{:#}", cfg.validate().unwrap_err());
    assert!(err.contains("select_every"), "{err}");
    // So do the ensemble's dynamics and the ensemble the dream halts with.
    cfg.controller.select_rollouts = 3;
    cfg.validate().unwrap();
    cfg.controller.dream.ensemble_dynamics = true;
    let err = format!("{:#}", cfg.validate().unwrap_err());
    assert!(err.contains("halt_quantile"), "{err}");
}

#[test]
fn append_refuses_another_env_config_and_records_new_episodes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let registry = Registry::with_builtins();
    let config = CollectConfig {
        env: "CartPole-v0".into(),
        episodes: 10,
        num_envs: 4,
        ..Default::default()
    };
    collect(&registry, &config, &data, &()).unwrap();
    let first = episode_seeds(&data);
    // The same command again with --append: the same seed, yet new episodes.
    let append = CollectConfig {
        append: true,
        ..config.clone()
    };
    let p = StopAfter::new(u64::MAX);
    collect(&registry, &append, &data, &p).unwrap();
    let seeds = episode_seeds(&data);
    assert_eq!(seeds.len(), 20);
    assert_eq!(seeds.iter().collect::<HashSet<_>>().len(), 20, "{seeds:?}");
    assert_eq!(&seeds[..10], &first[..]);
    let notes = p.notes.lock().unwrap().join("\n");
    assert!(
        notes.contains("collection 1") && notes.contains("no episode repeats"),
        "{notes}"
    );
    // Another env config is refused and nothing is written.
    let mut other = append.clone();
    other
        .env_config
        .insert("force_mag".into(), toml::Value::Float(5.0));
    let err = format!("{:#}", collect(&registry, &other, &data, &()).unwrap_err());
    assert!(err.contains("env config differs"), "{err}");
    assert_eq!(episode_seeds(&data).len(), 20);
    assert_eq!(Dataset::open(&data).unwrap().meta().collections.len(), 2);
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::with_builtins();
    let exp = cartpole(dir.path(), 4);
    let run = RunDir::new(dir.path());
    let held = run.lock().unwrap();
    let err = format!(
        "{:#}",
        run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap_err()
    );
    assert!(
        err.contains("in use by another dreamgym process")
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    drop(held);
    // A dataset folder is locked by its writer in the same way.
    let data_lock = dreamgym_base::FolderLock::acquire(&run.data()).unwrap();
    let err = format!(
        "{:#}",
        collect(&registry, &exp.rollout, &run.data(), &()).unwrap_err()
    );
    assert!(err.contains("in use"), "{err}");
    drop(data_lock);
    run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap();
}

#[test]
fn a_lost_last_update_is_repaired_and_a_plain_append_completes_nothing() {
    let registry = Registry::with_builtins();
    // All episodes on disk, but the final dataset.json update was lost (a full disk).
    let dir = tempfile::tempdir().unwrap();
    let exp = cartpole(dir.path(), 8);
    run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap();
    let data = RunDir::new(dir.path()).data();
    let path = data.join("dataset.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"complete\": true", "\"complete\": false"),
    )
    .unwrap();
    assert!(!Dataset::open(&data).unwrap().meta().is_complete());
    let out = run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap();
    assert!(out.collect.is_none());
    let meta = Dataset::open(&data).unwrap().meta().clone();
    assert!(meta.is_complete());
    // The repaired record counts what is on disk.
    assert_eq!(meta.collections[0].written, 8, "{:?}", meta.collections);

    // An interrupted collection is not completed by an unrelated append...
    let dir = tempfile::tempdir().unwrap();
    let exp = cartpole(dir.path(), 40);
    let data = RunDir::new(dir.path()).data();
    run_experiment(&exp, &registry, OnChange::Ask, &StopAfter::new(12)).unwrap_err();
    let append = CollectConfig {
        episodes: 1,
        append: true,
        ..exp.rollout.clone()
    };
    collect(&registry, &append, &data, &()).unwrap();
    assert!(!Dataset::open(&data).unwrap().meta().is_complete());
    // ...but the run that records the rest completes it, and says which collection did.
    run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap();
    let meta = Dataset::open(&data).unwrap().meta().clone();
    assert!(meta.is_complete(), "{:?}", meta.collections);
    assert_eq!(meta.collections[0].resumed_by, Some(2));
    assert!(episode_seeds(&data).len() >= 40);
}

#[test]
fn what_the_saved_config_cannot_vouch_for_is_refused() {
    let registry = Registry::with_builtins();
    let root = tempfile::tempdir().unwrap();
    dreamgym_agents::testing::tiny_run(root.path()).unwrap();
    let run = RunDir::new(root.path());
    let text = "name = \"t\"\n[rollout]\nenv = \"Racer-v0\"\nepisodes = 4\n\
                env_config = { obs = \"pixels\", width = 16, height = 16 }\n";
    let mut with_wm = parse_experiment(text, "test").unwrap();
    with_wm.world_models = Some(tiny_config());
    // No experiment.toml, but trained models: refused without a flag.
    let err = format!(
        "{:#}",
        prepare_run(&with_wm, &run, OnChange::Ask, &()).unwrap_err()
    );
    assert!(
        err.contains("no experiment.toml") && err.contains("--force"),
        "{err}"
    );
    prepare_run(&with_wm, &run, OnChange::Resume, &()).unwrap();
    // A config without [world_models] keeps the saved section, so a later change to it is
    // still caught.
    std::fs::write(run.experiment(), toml::to_string(&with_wm).unwrap()).unwrap();
    let collect_only = parse_experiment(text, "test").unwrap();
    let saved = dreamgym_agents::config_to_save(&collect_only, &run);
    assert_eq!(saved.world_models, with_wm.world_models);
    // A saved config without the section while its output is there: what made it is unknown.
    std::fs::write(run.experiment(), toml::to_string(&collect_only).unwrap()).unwrap();
    let err = format!(
        "{:#}",
        prepare_run(&with_wm, &run, OnChange::Ask, &()).unwrap_err()
    );
    assert!(err.contains("[world_models]"), "{err}");
    // --force discards the models (not the dataset).
    prepare_run(&with_wm, &run, OnChange::Force, &()).unwrap();
    assert!(!run.file("vae.safetensors").exists());
    assert!(run.data().join("dataset.json").exists());
    // Fewer epochs than V holds is not "done": it is refused.
    std::fs::write(run.experiment(), toml::to_string(&with_wm).unwrap()).unwrap();
    let cfg = tiny_config();
    run_world_models(&cfg, &run, &registry, Stage::Vae, &(), None).unwrap();
    let mut fewer = cfg.clone();
    fewer.vae.epochs = 1;
    let err = run_world_models(&fewer, &run, &registry, Stage::Vae, &(), None).unwrap_err();
    assert!(
        format!("{err:#}").contains("more than the 1 asked for"),
        "{err:#}"
    );
    let mut other_lr = cfg.clone();
    other_lr.vae.lr = 0.5;
    let err = run_world_models(&other_lr, &run, &registry, Stage::Vae, &(), None).unwrap_err();
    assert!(format!("{err:#}").contains("lr"), "{err:#}");
}

#[test]
fn configs_compare_in_their_typed_form_and_missing_chunks_are_damage() {
    let registry = Registry::with_builtins();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = CollectConfig {
        env: "CartPole-v0".into(),
        episodes: 130,
        num_envs: 4,
        ..Default::default()
    };
    config
        .env_config
        .insert("force_mag".into(), toml::Value::Integer(10));
    collect(&registry, &config, &data, &()).unwrap();
    // 10 and 10.0 are one config.
    let mut append = config.clone();
    append.append = true;
    append.episodes = 2;
    append
        .env_config
        .insert("force_mag".into(), toml::Value::Float(10.0));
    collect(&registry, &append, &data, &()).unwrap();
    // A deleted chunk is refused by a run, not silently trained around.
    std::fs::remove_file(data.join("chunk-000001.safetensors")).unwrap();
    assert_eq!(Dataset::open(&data).unwrap().missing_chunks().len(), 1);
    let mut exp = cartpole(dir.path(), 130);
    exp.rollout = config;
    let err = format!(
        "{:#}",
        run_experiment(&exp, &registry, OnChange::Ask, &()).unwrap_err()
    );
    assert!(
        err.contains("chunk-000001.safetensors") && err.contains("lost"),
        "{err}"
    );
    // Temporaries a killed process left in the run folder are gone once a run holds it.
    std::fs::write(dir.path().join(".vae.json.tmp-99"), b"x").unwrap();
    let _lock = RunDir::new(dir.path()).lock().unwrap();
    assert!(!dir.path().join(".vae.json.tmp-99").exists());
}

#[test]
fn a_config_the_stages_refuse_is_not_saved_over_a_folder_without_one() {
    let registry = Registry::with_builtins();
    let root = tempfile::tempdir().unwrap();
    dreamgym_agents::testing::tiny_run(root.path()).unwrap();
    let run = RunDir::new(root.path());
    let mut exp = parse_experiment(
        "name = \"t\"\n[rollout]\nenv = \"Racer-v0\"\nepisodes = 4\n\
         env_config = { obs = \"pixels\", width = 16, height = 16 }\n",
        "test",
    )
    .unwrap();
    exp.out = Some(root.path().to_path_buf());
    let mut cfg = tiny_config();
    cfg.vae.lr = 0.5;
    exp.world_models = Some(cfg);
    // The dataset is reused, but V refuses the other learning rate: --resume trusted the
    // stages' own checks, and they said no.
    let err = run_experiment(&exp, &registry, OnChange::Resume, &()).unwrap_err();
    assert!(format!("{err:#}").contains("lr"), "{err:#}");
    assert!(
        !run.experiment().exists(),
        "experiment.toml was written for a config the stages refused"
    );
}
