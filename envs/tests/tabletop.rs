//! `Tabletop-v0`: the language mode's rules (success, `done`, the command budget, parse errors
//! and impossible commands as observations), the scripted planner carrying out instructions in
//! the physics, the low-level mode, determinism, and text episodes on disk.

use dreamgym_envs::builtin::tabletop::{
    self, Family, Mode, Tabletop, TabletopConfig, parse_instruction, parse_observation,
};
use dreamgym_envs::recording::{Dataset, Episode, EpisodeWriter};
use dreamgym_envs::{Env, Info, Registry, Space, Value, check_env};

fn language(families: Vec<Family>) -> Tabletop {
    Tabletop::new(TabletopConfig {
        mode: Mode::Language,
        families,
        ..TabletopConfig::default()
    })
    .unwrap()
}

fn text(v: &Value) -> &str {
    v.as_text().expect("a text observation")
}

/// Runs the planner from the observation text alone, as a policy would.
fn planner_episode(env: &mut Tabletop, seed: u64) -> (bool, usize, f64) {
    let (obs, _) = env.reset(Some(seed), &Info::new()).unwrap();
    let (words, scene) = parse_observation(text(&obs)).unwrap();
    let instruction = parse_instruction(&words, &scene).unwrap();
    assert_eq!(&instruction, env.instruction());
    let mut obs = obs;
    let mut ret = 0.0;
    for actions in 1.. {
        let (_, scene) = parse_observation(text(&obs)).unwrap();
        let plan = tabletop::plan(&instruction, &scene);
        let program = if plan.is_empty() {
            "done".to_string()
        } else {
            tabletop::format_program(&plan)
        };
        let step = env.step(&Value::Text(program)).unwrap();
        ret += step.reward;
        obs = step.obs;
        if step.terminated || step.truncated {
            return (step.info["success"] == true, actions, ret);
        }
    }
    unreachable!()
}

#[test]
fn the_scripted_planner_carries_out_every_family() {
    for family in Family::ALL {
        let mut env = language(vec![family]);
        let n = 12;
        let mut wins = 0u64;
        for seed in 0..n {
            let (success, _, ret) = planner_episode(&mut env, seed);
            wins += success as u64;
            if success {
                assert!((ret - 1.0).abs() < 1e-9, "return {ret} on success");
            }
        }
        println!("{}: {wins}/{n}", family.name());
        assert!(wins * 4 >= n * 3, "{}: {wins} of {n}", family.name());
    }
}

#[test]
fn a_selector_pushes_the_object_the_reference_names_on_the_table_as_it_is() {
    let mut env = language(vec![Family::Reference]);
    let mut wins = 0;
    for seed in 0..8 {
        let (obs, _) = env.reset(Some(seed), &Info::new()).unwrap();
        let (words, scene) = parse_observation(text(&obs)).unwrap();
        let instruction = parse_instruction(&words, &scene).unwrap();
        let reference = instruction.reference.expect("a reference instruction");
        // The planner writes the selector, not the object it picks today.
        let plan = tabletop::plan(&instruction, &scene);
        let program = tabletop::format_program(&plan);
        assert!(
            program.contains(&reference.words()),
            "{program} for {words}"
        );
        let tabletop::Goal::Place { object, zone } = instruction.goal else {
            panic!("{:?}", instruction.goal)
        };
        let moved =
            |a: &tabletop::SceneState, b: &tabletop::SceneState| -> Vec<tabletop::ObjectRef> {
                a.objects
                    .iter()
                    .zip(&b.objects)
                    .filter(|(x, y)| (x.1[0] - y.1[0]).hypot(x.1[1] - y.1[1]) > 2.0)
                    .map(|(x, _)| x.0)
                    .collect()
            };
        let before = env.scene_state();
        let step = env
            .step(&Value::Text(format!(
                "push the {} into the {} zone",
                reference.words(),
                zone.name()
            )))
            .unwrap();
        let after = env.scene_state();
        assert!(
            moved(&before, &after).contains(&object),
            "seed {seed}: {program}"
        );
        wins += (step.info["success"] == true) as usize;
    }
    assert!(wins >= 6, "{wins} of 8");

    // A selector with nothing to pick is an impossible command, like an absent object.
    let mut env = language(vec![Family::Single]);
    let (obs, _) = env.reset(Some(5), &Info::new()).unwrap();
    let (_, scene) = parse_observation(text(&obs)).unwrap();
    let absent = tabletop::Colour::ALL
        .into_iter()
        .find(|c| scene.zone(*c).is_none())
        .unwrap();
    let step = env
        .step(&Value::Text(format!(
            "push object nearest the {} zone to (0, 0)",
            absent.name()
        )))
        .unwrap();
    let feedback = step.info["feedback"].as_str().unwrap();
    assert!(
        feedback.contains(&format!(
            "impossible: no object is the object nearest the {} zone",
            absent.name()
        )),
        "{feedback}"
    );
}

#[test]
fn done_ends_the_episode_and_the_budget_truncates_it() {
    let mut env = language(Family::ALL.to_vec());
    env.reset(Some(3), &Info::new()).unwrap();
    let step = env.step(&Value::Text("done".into())).unwrap();
    assert!(step.terminated && !step.truncated);
    assert_eq!(step.info["success"], false);
    assert!(env.step(&Value::Text("done".into())).is_err());

    // Eight unparsable actions spend the default budget of eight commands.
    let (obs, _) = env.reset(Some(3), &Info::new()).unwrap();
    assert!(text(&obs).contains("commands left: 8"));
    for i in 1..=8 {
        let step = env
            .step(&Value::Text("push the red cube into".into()))
            .unwrap();
        let feedback = step.info["feedback"].as_str().unwrap();
        assert!(feedback.contains("does not parse"), "{feedback}");
        assert!(feedback.contains("at character 22"), "{feedback}");
        assert!(text(&step.obs).contains(&format!("commands left: {}", 8 - i)));
        assert_eq!(step.reward, 0.0);
        assert!(!step.terminated);
        assert_eq!(step.truncated, i == 8, "step {i}");
    }
}

#[test]
fn impossible_commands_are_observations_that_cost_one_command() {
    let mut env = language(vec![Family::Single]);
    let (obs, _) = env.reset(Some(5), &Info::new()).unwrap();
    let (_, scene) = parse_observation(text(&obs)).unwrap();
    let absent = tabletop::Colour::ALL
        .into_iter()
        .flat_map(|c| {
            tabletop::Shape::ALL.map(|s| tabletop::ObjectRef {
                colour: c,
                shape: s,
            })
        })
        .find(|o| scene.position(*o).is_none())
        .unwrap();
    let before = env.scene_state();
    // The second command is never run: the first was impossible.
    let program = format!(
        "push {absent} to (0, 0); push {} left 5 cm",
        scene.objects[0].0
    );
    let step = env.step(&Value::Text(program)).unwrap();
    let feedback = step.info["feedback"].as_str().unwrap();
    assert!(
        feedback.contains(&format!("impossible: there is no {absent} on the table")),
        "{feedback}"
    );
    assert!(text(&step.obs).contains("commands left: 7"));
    assert_eq!(env.scene_state().objects, before.objects);
    let off = format!("push {} to (80, 0)", scene.objects[0].0);
    let step = env.step(&Value::Text(off)).unwrap();
    let feedback = step.info["feedback"].as_str().unwrap();
    assert!(feedback.contains("off the table"), "{feedback}");
    // Not text at all is an error, and the episode goes on.
    assert!(env.step(&Value::F32(vec![0.0, 0.0])).is_err());
    let step = env.step(&Value::Text("move to (10, -20)".into())).unwrap();
    assert!(step.info["feedback"].as_str().unwrap().contains("ok"));
    let p = env.scene_state().pusher;
    assert!(
        (p[0] - 10.0).abs() < 1.0 && (p[1] + 20.0).abs() < 1.0,
        "{p:?}"
    );
}

#[test]
fn a_program_runs_its_commands_in_order_and_each_costs_one() {
    let mut env = language(vec![Family::Number]);
    let (obs, _) = env.reset(Some(2), &Info::new()).unwrap();
    let (_, scene) = parse_observation(text(&obs)).unwrap();
    let step = env
        .step(&Value::Text(
            "move to (-20, -20)\nmove to (20, -20); ".into(),
        ))
        .unwrap();
    assert!(text(&step.obs).contains("commands left: 6"));
    let p = env.scene_state().pusher;
    assert!((p[0] - 20.0).abs() < 1.0, "{p:?}");
    assert_eq!(scene.zones, env.scene_state().zones);
}

#[test]
fn same_seed_same_episode_and_both_modes_pass_the_checker() {
    for mode in [Mode::LowLevel, Mode::Language] {
        for obs in ["state", "both"] {
            let config = serde_json::json!({ "mode": mode, "obs": obs, "width": 32, "height": 32 });
            let registry = Registry::with_builtins();
            let mut env = registry.make("Tabletop-v0", Some(&config)).unwrap();
            check_env(&mut env).unwrap_or_else(|e| panic!("{mode:?} {obs}: {e}"));
            let run = |env: &mut Box<dyn Env>| {
                let (first, _) = env.reset(Some(9), &Info::new()).unwrap();
                let action = match mode {
                    Mode::Language => {
                        Value::Text("push red cube right 5 cm; move to (0, 0)".into())
                    }
                    Mode::LowLevel => Value::F32(vec![0.7, 1.0]),
                };
                let mut out = vec![first];
                for _ in 0..3 {
                    match env.step(&action) {
                        Ok(s) => out.push(s.obs),
                        Err(e) => panic!("{e}"),
                    }
                }
                out
            };
            let mut other = registry.make("Tabletop-v0", Some(&config)).unwrap();
            assert_eq!(run(&mut env), run(&mut other), "{mode:?} {obs}");
        }
    }
}

#[test]
fn low_level_actions_drive_the_pusher() {
    let mut env = Tabletop::new(TabletopConfig::default()).unwrap();
    let (obs, info) = env.reset(Some(1), &Info::new()).unwrap();
    assert!(info["instruction"].as_str().is_some_and(|s| !s.is_empty()));
    let o = obs.as_f32().unwrap().to_vec();
    assert_eq!(o.len(), tabletop::STATE_LEN);
    assert_eq!(&o[..2], &[0.0, -0.25]);
    let step = env.step(&Value::F32(vec![2.0, 0.0])).unwrap();
    assert_eq!(step.info["action_clipped"], true);
    // Full speed to the right for one 0.04 s step: 1 cm at 0.25 m/s.
    let x = step.obs.as_f32().unwrap()[0];
    assert!((x - 0.01).abs() < 1e-4, "{x}");
    // The pusher stops at the wall.
    for _ in 0..400 {
        if env.step(&Value::F32(vec![1.0, 0.0])).unwrap().done() {
            break;
        }
    }
    assert!(env.scene_state().pusher[0] <= 48.5 + 1e-3);
}

#[test]
fn text_episodes_round_trip_through_a_dataset() {
    let mut env = language(Family::ALL.to_vec());
    let dir = tempfile::tempdir().unwrap();
    let meta = dreamgym_envs::recording::DatasetMeta::new(
        "Tabletop-v0",
        serde_json::json!({ "mode": "language" }),
        env.observation_space().clone(),
        env.action_space().clone(),
        "planner",
        Some(0),
    );
    assert!(matches!(env.action_space(), Space::Text(_)));
    let mut episodes = Vec::new();
    for seed in 0..3 {
        let (obs, _) = env.reset(Some(seed), &Info::new()).unwrap();
        let mut e = Episode::new(seed, obs);
        // Non-ASCII and empty actions are stored as they were given.
        for action in ["push the red cube ⇒ left", "", "done"] {
            let step = env.step(&Value::Text(action.into())).unwrap();
            e.push(
                Value::Text(action.into()),
                step.obs,
                step.reward,
                step.terminated,
                step.truncated,
            );
            if step.terminated || step.truncated {
                break;
            }
        }
        episodes.push(e);
    }
    let mut w = EpisodeWriter::create(dir.path(), meta, Default::default()).unwrap();
    for e in &episodes {
        w.push(e.clone()).unwrap();
    }
    w.finish().unwrap();
    let back = Dataset::open(dir.path()).unwrap().load();
    assert!(back.damaged.is_empty());
    assert_eq!(back.episodes, episodes);
}

#[test]
fn the_instruction_option_replaces_the_drawn_instruction_or_says_why_not() {
    let mut env = language(Family::ALL.to_vec());
    let (obs, _) = env.reset(Some(4), &Info::new()).unwrap();
    let (_, scene) = parse_observation(text(&obs)).unwrap();
    let object = scene.objects[0].0;
    let zone = scene.zones[0].0;
    let words = format!("push the {object} into the {} zone", zone.name());
    let absent_zone = tabletop::Colour::ALL
        .into_iter()
        .find(|c| scene.zone(*c).is_none())
        .unwrap();
    let mut options = Info::new();
    options.insert("instruction".into(), words.clone().into());
    let (obs, info) = env.reset(Some(4), &options).unwrap();
    assert_eq!(info["instruction"], words.as_str());
    // The same table: only the instruction changed.
    let (_, again) = parse_observation(text(&obs)).unwrap();
    assert_eq!(again.objects, scene.objects);
    assert_eq!(
        env.instruction().goal,
        tabletop::Goal::Place { object, zone }
    );
    for bad in [
        serde_json::json!("juggle the red cube"),
        serde_json::json!(3),
        serde_json::json!(format!(
            "push the {object} into the {} zone",
            absent_zone.name()
        )),
    ] {
        let mut options = Info::new();
        options.insert("instruction".into(), bad);
        assert!(matches!(
            env.reset(Some(4), &options),
            Err(dreamgym_envs::EnvError::InvalidOption(_))
        ));
    }
}

#[test]
fn an_action_s_motion_is_kept_on_request_and_changes_nothing() {
    // The registry's env (wrapped in its time limit) forwards the request.
    let registry = Registry::with_builtins();
    let config = serde_json::json!({ "mode": "language" });
    let mut watched = registry.make("Tabletop-v0", Some(&config)).unwrap();
    let mut plain = registry.make("Tabletop-v0", Some(&config)).unwrap();
    assert!(watched.keep_motion(4));
    let (obs, _) = watched.reset(Some(3), &Info::new()).unwrap();
    plain.reset(Some(3), &Info::new()).unwrap();
    assert!(watched.motion().is_empty(), "settling is not motion");
    let (words, scene) = parse_observation(text(&obs)).unwrap();
    let plan = tabletop::plan(&parse_instruction(&words, &scene).unwrap(), &scene);
    let program = Value::Text(tabletop::format_program(&plan[..1]));
    let a = watched.step(&program).unwrap();
    let b = plain.step(&program).unwrap();
    assert_eq!((&a.obs, a.reward), (&b.obs, b.reward));
    assert!(plain.motion().is_empty());
    let motion = watched.motion();
    assert!(motion.len() >= 5, "{} frames", motion.len());
    let (world, scene) = watched.scene().unwrap();
    assert!(motion.iter().all(|f| f.len() == scene.visuals.len()));
    // The pusher moved during the action, and the last frame is near where things ended.
    let moved = motion
        .iter()
        .zip(&motion[1..])
        .filter(|(x, y)| x != y)
        .count();
    assert!(moved >= motion.len() / 2, "{moved} of {}", motion.len());
    let now = scene.world_poses(world);
    let last = motion.last().unwrap();
    for (p, q) in last.iter().zip(&now) {
        if let (Some(p), Some(q)) = (p, q) {
            assert!((p.translation - q.translation).length() < 0.05);
        }
    }
    // Asked to stop: the next action keeps nothing.
    watched.keep_motion(0);
    watched.reset(Some(3), &Info::new()).unwrap();
    watched.step(&program).unwrap();
    assert!(watched.motion().is_empty());
}
