//! Writing episodes into chunk files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype as StDtype;
use safetensors::tensor::TensorView;

use super::{
    Collection, DatasetMeta, Episode, FORMAT, LeafKind, RecordError, VERSION, io_error, leaves,
    write_atomic,
};
use crate::{Space, Value};

/// When the writer flushes a chunk.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Flush once the buffered episodes hold this many bytes.
    pub chunk_bytes: usize,
    /// Flush once this many episodes are buffered.
    pub chunk_episodes: usize,
    /// Add to a dataset already in the folder (same env and spaces) instead of refusing.
    pub append: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            chunk_bytes: 32 << 20,
            chunk_episodes: 64,
            append: false,
        }
    }
}

/// Buffers episodes and writes them as chunks, each atomically.
pub struct EpisodeWriter {
    dir: PathBuf,
    meta: DatasetMeta,
    options: WriterOptions,
    buffer: Vec<Episode>,
    buffered_bytes: usize,
    next_chunk: usize,
    episodes_written: usize,
    steps_written: usize,
    chunks_written: usize,
    resumes: bool,
    _lock: dreamgym_base::FolderLock,
}

fn write_meta(path: &Path, meta: &DatasetMeta) -> Result<(), RecordError> {
    let json = serde_json::to_vec_pretty(meta)
        .map_err(|e| RecordError::Format(format!("cannot encode dataset.json: {e}")))?;
    write_atomic(path, &json)
}

impl EpisodeWriter {
    /// Creates the dataset folder (or opens it to append) and writes `dataset.json`.
    ///
    /// Takes the folder's lock (see [`dreamgym_base::FolderLock`]) for the writer's lifetime, so
    /// a second writer gets an error naming this process, and removes temporary files a killed
    /// writer left. Refuses a folder that already holds episodes unless `options.append`, and
    /// then only a dataset of the same env, env config and spaces, so nothing already recorded
    /// is overwritten or mixed with other data. A dataset that holds no chunk at all (its
    /// first collection died before writing one) is replaced.
    ///
    /// When appending, the dataset's own description (with its earlier collections) is kept;
    /// [`begin_collection`](Self::begin_collection) then records this one.
    pub fn create(
        dir: impl AsRef<Path>,
        meta: DatasetMeta,
        options: WriterOptions,
    ) -> Result<Self, RecordError> {
        let dir = dir.as_ref().to_path_buf();
        let lock = dreamgym_base::FolderLock::acquire(&dir)?;
        dreamgym_base::remove_stale_temporaries(&dir);
        let meta_path = dir.join("dataset.json");
        let mut next_chunk = 0;
        let mut meta = meta;
        let existing = if meta_path.exists() {
            let existing = super::Dataset::open(&dir)?;
            (!existing.chunk_paths().is_empty()).then_some(existing)
        } else {
            let visible = std::fs::read_dir(&dir)
                .map_err(io_error("cannot read", &dir))?
                .flatten()
                .any(|e| !e.file_name().to_string_lossy().starts_with('.'));
            if visible {
                return Err(RecordError::Format(format!(
                    "{} is not empty and holds no dataset.json; refusing to write into it",
                    dir.display()
                )));
            }
            None
        };
        if let Some(existing) = existing {
            let m = existing.meta();
            if !options.append {
                return Err(RecordError::Format(format!(
                    "{} already holds a dataset ({} chunks of {}{}); choose another folder, or \
                     append to it",
                    dir.display(),
                    existing.chunk_paths().len(),
                    m.env_id,
                    if m.is_complete() {
                        ""
                    } else {
                        ", from a collection that did not finish"
                    }
                )));
            }
            let differs = [
                ("env", m.env_id != meta.env_id),
                ("env config", m.env_config != meta.env_config),
                (
                    "observation space",
                    m.observation_space != meta.observation_space,
                ),
                ("action space", m.action_space != meta.action_space),
            ];
            if let Some((what, _)) = differs.iter().find(|(_, d)| *d) {
                return Err(RecordError::Format(format!(
                    "cannot append to {}: its {what} differs (it holds {} {}, this collection \
                     is {} {}); record into another folder",
                    dir.display(),
                    m.env_id,
                    m.env_config,
                    meta.env_id,
                    meta.env_config
                )));
            }
            next_chunk = existing.next_chunk_index();
            meta = m.clone();
        }
        write_meta(&meta_path, &meta)?;
        Ok(Self {
            dir,
            meta,
            options,
            buffer: Vec::new(),
            buffered_bytes: 0,
            next_chunk,
            episodes_written: 0,
            steps_written: 0,
            chunks_written: 0,
            resumes: false,
            _lock: lock,
        })
    }

    /// The dataset's description as written (with every earlier collection when appending).
    pub fn meta(&self) -> &DatasetMeta {
        &self.meta
    }

    /// Whether the folder already held episodes when this writer opened it (it appends).
    pub fn appends(&self) -> bool {
        self.next_chunk > self.chunks_written
    }

    /// Says that this collection records the rest of the unfinished ones before it: when it
    /// finishes, they are marked complete (`resumed_by` this one).
    pub fn resumes_unfinished(&mut self) {
        self.resumes = true;
    }

    /// Records in `dataset.json` that `collection` is adding episodes, marked incomplete until
    /// [`finish`](Self::finish).
    pub fn begin_collection(&mut self, mut collection: Collection) -> Result<(), RecordError> {
        collection.written = 0;
        collection.complete = false;
        self.meta.collections.push(collection);
        write_meta(&self.dir.join("dataset.json"), &self.meta)
    }

    /// The dataset folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Episodes and steps flushed to disk so far.
    pub fn written(&self) -> (usize, usize) {
        (self.episodes_written, self.steps_written)
    }

    /// Adds an episode, flushing a chunk when the buffer is full.
    pub fn push(&mut self, episode: Episode) -> Result<(), RecordError> {
        check_episode(&episode)?;
        self.buffered_bytes += approx_bytes(&episode);
        self.buffer.push(episode);
        if self.buffered_bytes >= self.options.chunk_bytes
            || self.buffer.len() >= self.options.chunk_episodes
        {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered episodes as one chunk (nothing if the buffer is empty).
    pub fn flush(&mut self) -> Result<(), RecordError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let bytes = encode_chunk(&self.meta, &self.buffer)?;
        let path = self
            .dir
            .join(format!("chunk-{:06}.safetensors", self.next_chunk));
        write_atomic(&path, &bytes)?;
        self.next_chunk += 1;
        self.chunks_written += 1;
        self.episodes_written += self.buffer.len();
        self.steps_written += self.buffer.iter().map(Episode::len).sum::<usize>();
        self.buffer.clear();
        self.buffered_bytes = 0;
        Ok(())
    }

    /// Flushes what is left, marks this collection complete in `dataset.json`, and returns
    /// (episodes, steps) written.
    pub fn finish(self) -> Result<(usize, usize), RecordError> {
        self.end(true)
    }

    /// Flushes what is left but leaves this collection marked incomplete (it was interrupted
    /// or failed), so that the dataset is resumed rather than trained on.
    pub fn finish_incomplete(self) -> Result<(usize, usize), RecordError> {
        self.end(false)
    }

    fn end(mut self, complete: bool) -> Result<(usize, usize), RecordError> {
        self.flush()?;
        let last = self.meta.collections.len().saturating_sub(1);
        if let Some(c) = self.meta.collections.last_mut() {
            c.written = self.episodes_written;
            c.complete = complete;
            if complete && self.resumes {
                for earlier in &mut self.meta.collections[..last] {
                    if !earlier.complete {
                        earlier.complete = true;
                        earlier.resumed_by = Some(last);
                    }
                }
            }
            write_meta(&self.dir.join("dataset.json"), &self.meta)?;
        }
        Ok(self.written())
    }
}

/// Marks every collection of the dataset in `dir` complete: for a dataset whose episodes are
/// all on disk but whose last `dataset.json` update was lost (a full disk, a kill at the very
/// end). Takes the folder's lock.
pub fn mark_complete(dir: &Path) -> Result<(), RecordError> {
    let _lock = dreamgym_base::FolderLock::acquire(dir)?;
    let ds = super::Dataset::open(dir)?;
    let mut meta = ds.meta().clone();
    // The unfinished collections' share of the episodes on disk (their `written` was never
    // recorded).
    let mut rest = ds
        .stored_episodes()
        .saturating_sub(meta.finished_episodes());
    for c in &mut meta.collections {
        if !c.complete {
            c.written = rest.min(c.episodes);
            rest -= c.written;
        }
        c.complete = true;
    }
    write_meta(&dir.join("dataset.json"), &meta)
}

/// Renames the policy that recorded the dataset in `dir` (and each of its collections that
/// `from` recorded) to `to`: for a dataset whose recording agent moved, such as a run folder
/// copied elsewhere whose episodes name the agent by its old path. The episodes and the
/// fingerprint stay as they are. Takes the folder's lock.
pub fn rename_policy(dir: &Path, from: &str, to: &str) -> Result<(), RecordError> {
    let _lock = dreamgym_base::FolderLock::acquire(dir)?;
    let ds = super::Dataset::open(dir)?;
    let mut meta = ds.meta().clone();
    if meta.policy == from {
        meta.policy = to.to_string();
    }
    for c in &mut meta.collections {
        if c.policy == from {
            c.policy = to.to_string();
        }
    }
    write_meta(&dir.join("dataset.json"), &meta)
}

fn approx_bytes(e: &Episode) -> usize {
    let size = |v: &Value| match v {
        Value::F32(x) => x.len() * 4,
        Value::U8(x) => x.len(),
        Value::Int(_) => 8,
        Value::Ints(x) => x.len() * 8,
        Value::Dict(d) => d.len() * 64,
        Value::Text(t) => t.len() + 8,
    };
    e.observations.iter().map(size).sum::<usize>()
        + e.actions.iter().map(size).sum::<usize>()
        + e.len() * 10
}

fn check_episode(e: &Episode) -> Result<(), RecordError> {
    let t = e.actions.len();
    if e.observations.len() != t + 1
        || e.rewards.len() != t
        || e.terminated.len() != t
        || e.truncated.len() != t
    {
        return Err(RecordError::Mismatch(format!(
            "{} observations, {} actions, {} rewards, {}/{} flags: need T+1 observations and T \
             of the rest",
            e.observations.len(),
            t,
            e.rewards.len(),
            e.terminated.len(),
            e.truncated.len()
        )));
    }
    Ok(())
}

/// Appends the bytes of `value` (of `space`) to the columns named from `prefix`.
fn encode_value(
    space: &Space,
    value: &Value,
    prefix: &str,
    cols: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), RecordError> {
    let mismatch =
        || RecordError::Mismatch(format!("{prefix}: {} is not in {space}", value.describe()));
    match (space, value) {
        (Space::Box(b), Value::F32(v)) if v.len() == b.len() => {
            let col = cols.entry(prefix.to_string()).or_default();
            v.iter()
                .for_each(|x| col.extend_from_slice(&x.to_le_bytes()));
        }
        (Space::Box(b), Value::U8(v)) if v.len() == b.len() => {
            cols.entry(prefix.to_string())
                .or_default()
                .extend_from_slice(v);
        }
        (Space::Discrete(_), Value::Int(i)) => {
            cols.entry(prefix.to_string())
                .or_default()
                .extend_from_slice(&i.to_le_bytes());
        }
        (Space::MultiDiscrete(m), Value::Ints(v)) if v.len() == m.nvec.len() => {
            let col = cols.entry(prefix.to_string()).or_default();
            v.iter()
                .for_each(|x| col.extend_from_slice(&x.to_le_bytes()));
        }
        (Space::Dict(d), Value::Dict(v)) => {
            for (k, s) in &d.spaces {
                let x = v.get(k).ok_or_else(mismatch)?;
                encode_value(s, x, &format!("{prefix}.{k}"), cols)?;
            }
        }
        (Space::Text(_), Value::Text(t)) => {
            let col = cols.entry(prefix.to_string()).or_default();
            col.extend_from_slice(t.as_bytes());
            let end = col.len() as i64;
            cols.entry(super::offsets_name(prefix))
                .or_default()
                .extend_from_slice(&end.to_le_bytes());
        }
        _ => return Err(mismatch()),
    }
    Ok(())
}

/// Encodes episodes as one safetensors chunk with its checksum in the metadata.
pub(crate) fn encode_chunk(
    meta: &DatasetMeta,
    episodes: &[Episode],
) -> Result<Vec<u8>, RecordError> {
    let mut cols: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut shapes: BTreeMap<String, (StDtype, Vec<usize>)> = BTreeMap::new();
    let mut texts: Vec<String> = Vec::new();
    let (n_obs, n_steps): (usize, usize) = episodes
        .iter()
        .fold((0, 0), |(o, s), e| (o + e.observations.len(), s + e.len()));
    for (space, prefix, rows) in [
        (&meta.observation_space, "obs", n_obs),
        (&meta.action_space, "action", n_steps),
    ] {
        for leaf in leaves(space, prefix) {
            let dtype = match leaf.kind {
                LeafKind::F32 => StDtype::F32,
                LeafKind::U8 => StDtype::U8,
                LeafKind::I64 => StDtype::I64,
                LeafKind::Text => {
                    // Offsets start at 0; the byte column's length is known once encoded.
                    let offsets = super::offsets_name(&leaf.name);
                    cols.insert(offsets.clone(), 0i64.to_le_bytes().to_vec());
                    shapes.insert(offsets, (StDtype::I64, vec![rows + 1]));
                    cols.insert(leaf.name.clone(), Vec::new());
                    texts.push(leaf.name);
                    continue;
                }
            };
            let mut shape = vec![rows];
            shape.extend(&leaf.row_shape);
            cols.insert(leaf.name.clone(), Vec::new());
            shapes.insert(leaf.name, (dtype, shape));
        }
    }
    let mut reward = Vec::with_capacity(n_steps * 8);
    let mut terminated = Vec::with_capacity(n_steps);
    let mut truncated = Vec::with_capacity(n_steps);
    let mut lengths = Vec::with_capacity(episodes.len() * 8);
    let mut seeds = Vec::with_capacity(episodes.len() * 8);
    for e in episodes {
        for o in &e.observations {
            encode_value(&meta.observation_space, o, "obs", &mut cols)?;
        }
        for a in &e.actions {
            encode_value(&meta.action_space, a, "action", &mut cols)?;
        }
        e.rewards
            .iter()
            .for_each(|r| reward.extend_from_slice(&r.to_le_bytes()));
        terminated.extend(e.terminated.iter().map(|&b| b as u8));
        truncated.extend(e.truncated.iter().map(|&b| b as u8));
        lengths.extend_from_slice(&(e.len() as i64).to_le_bytes());
        seeds.extend_from_slice(&e.seed.to_le_bytes());
    }
    let n_eps = episodes.len();
    for name in texts {
        let len = cols.get(&name).map_or(0, Vec::len);
        shapes.insert(name, (StDtype::U8, vec![len]));
    }
    cols.insert("reward".into(), reward);
    shapes.insert("reward".into(), (StDtype::F64, vec![n_steps]));
    cols.insert("terminated".into(), terminated);
    shapes.insert("terminated".into(), (StDtype::U8, vec![n_steps]));
    cols.insert("truncated".into(), truncated);
    shapes.insert("truncated".into(), (StDtype::U8, vec![n_steps]));
    cols.insert("episode_length".into(), lengths);
    shapes.insert("episode_length".into(), (StDtype::I64, vec![n_eps]));
    cols.insert("episode_seed".into(), seeds);
    shapes.insert("episode_seed".into(), (StDtype::U64, vec![n_eps]));

    for (name, data) in &cols {
        let (dtype, shape) = &shapes[name];
        // Validates that each column's byte length matches its dtype and shape.
        TensorView::new(*dtype, shape.clone(), data)
            .map_err(|e| RecordError::Mismatch(format!("column {name}: {e}")))?;
    }
    // Image columns are stored zlib-compressed, as a 1-D u8 tensor named `<column>.zlib`.
    let images: Vec<String> = shapes
        .iter()
        .filter(|(_, (dtype, shape))| *dtype == StDtype::U8 && shape.len() == 4)
        .map(|(name, _)| name.clone())
        .filter(|name| name.starts_with("obs"))
        .collect();
    for name in images {
        let raw = cols.remove(&name).unwrap_or_default();
        shapes.remove(&name);
        let mut encoder = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(raw.len() / 8),
            flate2::Compression::fast(),
        );
        std::io::Write::write_all(&mut encoder, &raw)
            .and_then(|_| encoder.finish())
            .map(|packed| {
                shapes.insert(format!("{name}.zlib"), (StDtype::U8, vec![packed.len()]));
                cols.insert(format!("{name}.zlib"), packed);
            })
            .map_err(|e| RecordError::Format(format!("cannot compress {name}: {e}")))?;
    }
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), FORMAT.to_string());
    metadata.insert("version".to_string(), VERSION.to_string());
    let mut data = Vec::with_capacity(cols.values().map(Vec::len).sum());
    for c in cols.values() {
        data.extend_from_slice(c);
    }
    metadata.insert(
        "crc32".to_string(),
        format!("{:08x}", crc32fast::hash(&data)),
    );
    Ok(serialize_sorted(&cols, &shapes, &metadata, &data))
}

/// A standard safetensors file with every JSON key sorted, so the same tensors always give
/// the same bytes (the `safetensors` crate orders `__metadata__` by a `HashMap`, which differs
/// from one process to the next). Tensors are laid out in name order.
fn serialize_sorted(
    cols: &BTreeMap<String, Vec<u8>>,
    shapes: &BTreeMap<String, (StDtype, Vec<usize>)>,
    metadata: &BTreeMap<String, String>,
    data: &[u8],
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(metadata));
    let mut offset = 0usize;
    for (name, bytes) in cols {
        let (dtype, shape) = &shapes[name];
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": format!("{dtype:?}"),
                "shape": shape,
                "data_offsets": [offset, offset + bytes.len()],
            }),
        );
        offset += bytes.len();
    }
    // serde_json's Map is a BTreeMap (no `preserve_order`): keys come out sorted.
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    out
}

/// The bytes after a safetensors header.
pub(crate) fn data_section(bytes: &[u8]) -> Result<&[u8], RecordError> {
    let bad = |reason: &str| RecordError::Format(format!("not a safetensors buffer: {reason}"));
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("shorter than 8 bytes"))?;
    let n = u64::from_le_bytes(head) as usize;
    bytes
        .get(8usize.saturating_add(n)..)
        .ok_or_else(|| bad("header longer than the file"))
}
