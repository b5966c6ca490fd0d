//! Recording: round trip, the on-disk layout, damaged chunks, bad folders, replay from seeds.

use std::path::Path;

use dreamgym_envs::recording::{
    Dataset, DatasetMeta, Episode, EpisodeWriter, RecordError, WindowSampler, WriterOptions,
};
use dreamgym_envs::{Env, Info, Registry, Value};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn record_episodes(id: &str, n: usize, seed: u64) -> (DatasetMeta, Vec<Episode>) {
    let registry = Registry::with_builtins();
    let mut env = registry.make(id, None).unwrap();
    let meta = DatasetMeta::new(
        id,
        registry.resolve_config(id, None).unwrap(),
        env.observation_space().clone(),
        env.action_space().clone(),
        "random",
        Some(seed),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut episodes = Vec::new();
    let (obs, info) = env.reset(Some(seed), &Info::new()).unwrap();
    let mut e = Episode::new(info["episode_seed"].as_u64().unwrap(), obs);
    while episodes.len() < n {
        let a = env.action_space().sample(&mut rng);
        let s = env.step(&a).unwrap();
        let done = s.done();
        e.push(a, s.obs, s.reward, s.terminated, s.truncated);
        if done {
            episodes.push(e);
            let (obs, info) = env.reset(None, &Info::new()).unwrap();
            e = Episode::new(info["episode_seed"].as_u64().unwrap(), obs);
        }
    }
    (meta, episodes)
}

fn write(dir: &Path, meta: &DatasetMeta, episodes: &[Episode], per_chunk: usize) {
    let mut w = EpisodeWriter::create(
        dir,
        meta.clone(),
        WriterOptions {
            chunk_episodes: per_chunk,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    for e in episodes {
        w.push(e.clone()).unwrap();
    }
    assert_eq!(w.finish().unwrap().0, episodes.len());
}

#[test]
fn episodes_round_trip_for_discrete_and_continuous_envs() {
    for id in ["CartPole-v0", "Reacher-v0"] {
        let dir = tempfile::tempdir().unwrap();
        let (meta, episodes) = record_episodes(id, 7, 3);
        write(dir.path(), &meta, &episodes, 3);
        let ds = Dataset::open(dir.path()).unwrap();
        assert_eq!(ds.chunk_paths().len(), 3);
        assert_eq!(ds.meta(), &meta);
        let report = ds.load();
        assert!(report.damaged.is_empty());
        assert_eq!(report.episodes, episodes, "{id}");
    }
}

/// Reads a chunk the way a Python user would with numpy alone: header length, JSON header,
/// raw little-endian arrays at the stated offsets.
#[test]
fn chunks_are_plain_safetensors_with_a_checksum_of_the_data_section() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, episodes) = record_episodes("CartPole-v0", 2, 0);
    write(dir.path(), &meta, &episodes, 10);
    let bytes = std::fs::read(dir.path().join("chunk-000000.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    assert_eq!(header["__metadata__"]["format"], "dreamgym-episodes");
    assert_eq!(header["__metadata__"]["version"], "2");
    let crc = u32::from_str_radix(header["__metadata__"]["crc32"].as_str().unwrap(), 16).unwrap();
    assert_eq!(crc, crc32fast::hash(data));
    let steps: usize = episodes.iter().map(Episode::len).sum();
    assert_eq!(header["obs"]["dtype"], "F32");
    assert_eq!(header["obs"]["shape"], serde_json::json!([steps + 2, 4]));
    assert_eq!(header["action"]["dtype"], "I64");
    assert_eq!(header["reward"]["shape"], serde_json::json!([steps]));
    assert_eq!(header["episode_seed"]["dtype"], "U64");
    // The first observation row decodes to the first episode's reset observation.
    let [start, _] = [
        header["obs"]["data_offsets"][0].as_u64().unwrap() as usize,
        0,
    ];
    let first: Vec<f32> = data[start..start + 16]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(Value::F32(first), episodes[0].observations[0]);
}

#[test]
fn a_corrupt_chunk_is_reported_and_the_rest_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, episodes) = record_episodes("Reacher-v0", 6, 1);
    write(dir.path(), &meta, &episodes, 2);
    let victim = dir.path().join("chunk-000001.safetensors");
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let report = Dataset::open(dir.path()).unwrap().load();
    assert_eq!(report.episodes.len(), 4);
    assert_eq!(report.episodes[..2], episodes[..2]);
    assert_eq!(report.episodes[2..], episodes[4..]);
    assert_eq!(report.damaged.len(), 1);
    let (path, err) = &report.damaged[0];
    assert_eq!(path, &victim);
    assert!(
        matches!(err, RecordError::Corrupt { reason, .. } if reason.contains("checksum")),
        "{err}"
    );
    // The check without decoding finds the same damage, and counts the sound chunks.
    let ds = Dataset::open(dir.path()).unwrap();
    let checked: Vec<_> = ds.chunk_paths().iter().map(|p| ds.check_chunk(p)).collect();
    assert_eq!(checked.len(), 3);
    assert_eq!(checked[0].as_ref().unwrap(), &2);
    assert_eq!(checked[2].as_ref().unwrap(), &2);
    assert!(
        matches!(&checked[1], Err(RecordError::Corrupt { reason, .. }) if reason.contains("checksum")),
        "{:?}",
        checked[1]
    );
}

#[test]
fn a_truncated_chunk_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, episodes) = record_episodes("CartPole-v0", 4, 2);
    write(dir.path(), &meta, &episodes, 2);
    let victim = dir.path().join("chunk-000000.safetensors");
    let bytes = std::fs::read(&victim).unwrap();
    for cut in [3, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&victim, &bytes[..cut]).unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        let report = ds.load();
        assert_eq!(report.damaged.len(), 1, "cut at {cut}");
        assert_eq!(report.episodes, episodes[2..], "cut at {cut}");
        assert!(ds.check_chunk(&victim).is_err(), "cut at {cut}");
        assert_eq!(ds.check_chunk(&ds.chunk_paths()[1]).unwrap(), 2);
    }
}

#[test]
fn leftover_temporary_files_from_a_killed_writer_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, episodes) = record_episodes("CartPole-v0", 2, 2);
    write(dir.path(), &meta, &episodes, 10);
    std::fs::write(dir.path().join("chunk-000001.tmp-999"), b"half a chunk").unwrap();
    let report = Dataset::open(dir.path()).unwrap().load();
    assert!(report.damaged.is_empty());
    assert_eq!(report.episodes, episodes);
}

#[test]
fn what_a_writer_killed_by_a_full_disk_leaves_never_blocks_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, episodes) = record_episodes("CartPole-v0", 2, 2);
    // A first collection wrote dataset.json, then died writing its first chunk.
    let w = EpisodeWriter::create(dir.path(), meta.clone(), WriterOptions::default()).unwrap();
    drop(w);
    let stray = dir.path().join(".chunk-000000.safetensors.tmp-999");
    std::fs::write(&stray, b"half a chunk").unwrap();
    // The next writer takes the folder over: nothing was recorded, so nothing is lost.
    write(dir.path(), &meta, &episodes, 10);
    assert!(!stray.exists(), "the stray temporary file was kept");
    assert_eq!(Dataset::open(dir.path()).unwrap().load().episodes, episodes);
}

#[test]
fn unwritable_or_occupied_folders_are_clear_errors_and_nothing_is_overwritten() {
    let (meta, episodes) = record_episodes("CartPole-v0", 2, 4);
    // A path below a regular file cannot be created (this holds even for root).
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = EpisodeWriter::create(
        file.path().join("out"),
        meta.clone(),
        WriterOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("cannot create folder"), "{err}");
    // A folder with other files in it is refused.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    assert!(EpisodeWriter::create(dir.path(), meta.clone(), WriterOptions::default()).is_err());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "mine"
    );
    // An existing dataset is refused without append, extended with it.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &meta, &episodes, 10);
    assert!(EpisodeWriter::create(dir.path(), meta.clone(), WriterOptions::default()).is_err());
    let mut w = EpisodeWriter::create(
        dir.path(),
        meta.clone(),
        WriterOptions {
            append: true,
            ..Default::default()
        },
    )
    .unwrap();
    w.push(episodes[0].clone()).unwrap();
    w.finish().unwrap();
    assert_eq!(Dataset::open(dir.path()).unwrap().load().episodes.len(), 3);
    // Appending a different env is refused.
    let (other, _) = record_episodes("Reacher-v0", 1, 0);
    assert!(
        EpisodeWriter::create(
            dir.path(),
            other,
            WriterOptions {
                append: true,
                ..Default::default()
            }
        )
        .is_err()
    );
    // Not a dataset at all.
    let empty = tempfile::tempdir().unwrap();
    assert!(Dataset::open(empty.path()).is_err());
    assert!(Dataset::open(empty.path().join("missing")).is_err());
}

#[test]
fn a_recorded_episode_replays_bit_identically_from_its_seed_and_actions() {
    let (_, episodes) = record_episodes("Racer-v0", 1, 9);
    let registry = Registry::with_builtins();
    let e = &episodes[0];
    let mut env = registry.make("Racer-v0", None).unwrap();
    let (obs, _) = env.reset(Some(e.seed), &Info::new()).unwrap();
    assert_eq!(obs, e.observations[0]);
    for (t, a) in e.actions.iter().enumerate().take(300) {
        let s = env.step(a).unwrap();
        assert_eq!(s.obs, e.observations[t + 1], "step {t}");
        assert_eq!(s.reward.to_bits(), e.rewards[t].to_bits());
    }
}

#[test]
fn windows_cover_every_start_once_in_a_seeded_order() {
    let (_, episodes) = record_episodes("CartPole-v0", 5, 5);
    let len = 4;
    let sampler = WindowSampler::new(&episodes, len, 1);
    let expected: usize = episodes
        .iter()
        .map(|e| (e.len() + 1).saturating_sub(len))
        .sum();
    assert_eq!(sampler.len(), expected);
    let windows: Vec<_> = sampler.iter().collect();
    let mut starts: Vec<(usize, usize)> = windows.iter().map(|w| (w.episode, w.start)).collect();
    let in_order = starts.clone();
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), expected);
    assert_ne!(in_order, starts, "windows should be shuffled");
    for w in &windows {
        let e = &episodes[w.episode];
        assert_eq!(w.observations.len(), len + 1);
        assert_eq!(
            w.observations[..],
            e.observations[w.start..w.start + len + 1]
        );
        assert_eq!(w.actions[..], e.actions[w.start..w.start + len]);
    }
    let again: Vec<_> = WindowSampler::new(&episodes, len, 1)
        .iter()
        .map(|w| (w.episode, w.start))
        .collect();
    assert_eq!(again, in_order);
}

/// Records pixel episodes of `id` with `config`.
fn record_pixel_episodes(
    id: &str,
    config: serde_json::Value,
    n: usize,
) -> (DatasetMeta, Vec<Episode>) {
    let registry = Registry::with_builtins();
    let mut env = registry.make(id, Some(&config)).unwrap();
    let meta = DatasetMeta::new(
        id,
        registry.resolve_config(id, Some(&config)).unwrap(),
        env.observation_space().clone(),
        env.action_space().clone(),
        "random",
        Some(0),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut episodes = Vec::new();
    for seed in 0..n as u64 {
        let (obs, _) = env.reset(Some(seed), &Info::new()).unwrap();
        let mut e = Episode::new(seed, obs);
        for _ in 0..60 {
            let a = env.action_space().sample(&mut rng);
            let s = env.step(&a).unwrap();
            let done = s.done();
            e.push(a, s.obs, s.reward, s.terminated, s.truncated);
            if done {
                break;
            }
        }
        episodes.push(e);
    }
    (meta, episodes)
}

#[test]
fn pixel_columns_are_zlib_compressed_and_round_trip() {
    for (mode, column) in [("pixels", "obs"), ("both", "obs.pixels")] {
        let dir = tempfile::tempdir().unwrap();
        let (meta, episodes) = record_pixel_episodes(
            "Racer-v0",
            serde_json::json!({"obs": mode, "width": 32, "height": 32}),
            3,
        );
        write(dir.path(), &meta, &episodes, 10);
        assert_eq!(
            Dataset::open(dir.path()).unwrap().load().episodes,
            episodes,
            "obs={mode}"
        );
        // What a Python user does: find `<column>.zlib`, zlib-decompress it, reshape.
        let bytes = std::fs::read(dir.path().join("chunk-000000.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let entry = &header[format!("{column}.zlib")];
        assert_eq!(entry["dtype"], "U8", "{header}");
        assert!(
            header.get(column).is_none(),
            "the raw column is not stored too"
        );
        let [a, b] = [0, 1].map(|k| entry["data_offsets"][k].as_u64().unwrap() as usize);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::ZlibDecoder::new(&bytes[8 + n + a..8 + n + b]),
            &mut raw,
        )
        .unwrap();
        let rows: usize = episodes.iter().map(|e| e.observations.len()).sum();
        assert_eq!(raw.len(), rows * 32 * 32 * 3);
        assert!(
            (b - a) * 4 < raw.len(),
            "compressed {} of {} bytes",
            b - a,
            raw.len()
        );
        let first = match &episodes[0].observations[0] {
            Value::U8(v) => v.clone(),
            Value::Dict(d) => match &d["pixels"] {
                Value::U8(v) => v.clone(),
                _ => unreachable!(),
            },
            _ => unreachable!(),
        };
        assert_eq!(&raw[..32 * 32 * 3], &first[..]);
    }
}

#[test]
fn version_1_datasets_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, episodes) = record_episodes("CartPole-v0", 2, 8);
    write(dir.path(), &meta, &episodes, 10);
    // Turn it into a version-1 dataset (no compressed columns: the layout is the same).
    let meta_path = dir.path().join("dataset.json");
    let text = std::fs::read_to_string(&meta_path)
        .unwrap()
        .replace("\"version\": 2", "\"version\": 1");
    std::fs::write(&meta_path, text).unwrap();
    let chunk = dir.path().join("chunk-000000.safetensors");
    let bytes = std::fs::read(&chunk).unwrap();
    let mut fixed = bytes.clone();
    let needle = b"\"version\":\"2\"";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
        + 11;
    fixed[at] = b'1';
    std::fs::write(&chunk, fixed).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.meta().version, 1);
    let report = ds.load();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert_eq!(report.episodes, episodes);
    // A future version is refused with a clear message.
    let text = std::fs::read_to_string(&meta_path)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 9");
    std::fs::write(&meta_path, text).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("version 9"), "{err}");
}
