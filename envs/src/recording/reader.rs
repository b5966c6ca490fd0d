//! Reading datasets: whole episodes, and shuffled fixed-length windows for training.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use safetensors::SafeTensors;

use super::writer::data_section;
use super::{
    DatasetMeta, Episode, FORMAT, LeafKind, OLDEST_READABLE, RecordError, VERSION, io_error, leaves,
};
use crate::{Space, Value};

/// A dataset folder opened for reading.
#[derive(Debug, Clone)]
pub struct Dataset {
    dir: PathBuf,
    meta: DatasetMeta,
    chunks: Vec<PathBuf>,
}

/// Episodes loaded from a dataset, and the chunks that could not be read.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Every episode of every readable chunk, in order.
    pub episodes: Vec<Episode>,
    /// Chunks skipped, with why.
    pub damaged: Vec<(PathBuf, RecordError)>,
}

impl Dataset {
    /// Opens a dataset folder: reads and checks `dataset.json` and lists the chunks.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, RecordError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(RecordError::Format(format!(
                "{} is not a folder (expected a dataset written by `dreamgym rollout`)",
                dir.display()
            )));
        }
        let meta_path = dir.join("dataset.json");
        let text = std::fs::read(&meta_path).map_err(io_error("cannot read", &meta_path))?;
        let meta: DatasetMeta = serde_json::from_slice(&text).map_err(|e| {
            RecordError::Format(format!("{} is not valid: {e}", meta_path.display()))
        })?;
        if meta.format != FORMAT {
            return Err(RecordError::Format(format!(
                "{}: format is `{}`, expected `{FORMAT}`",
                meta_path.display(),
                meta.format
            )));
        }
        if !(OLDEST_READABLE..=VERSION).contains(&meta.version) {
            return Err(RecordError::Format(format!(
                "{}: format version {} is not supported (this build reads versions \
                 {OLDEST_READABLE} to {VERSION})",
                meta_path.display(),
                meta.version
            )));
        }
        let mut chunks: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io_error("cannot list", &dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("chunk-") && n.ends_with(".safetensors"))
            })
            .collect();
        chunks.sort();
        Ok(Self { dir, meta, chunks })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What `dataset.json` says.
    pub fn meta(&self) -> &DatasetMeta {
        &self.meta
    }

    /// The chunk files, in order.
    pub fn chunk_paths(&self) -> &[PathBuf] {
        &self.chunks
    }

    /// Episodes in the chunks whose headers can be read (without decoding any data).
    pub fn stored_episodes(&self) -> usize {
        self.chunks.iter().filter_map(|p| stored_episodes(p)).sum()
    }

    /// Chunks missing from the numbered sequence (a chunk file deleted after it was written):
    /// their episodes are lost, which counts as damage.
    pub fn missing_chunks(&self) -> Vec<PathBuf> {
        let have: std::collections::BTreeSet<usize> =
            self.chunks.iter().filter_map(|p| chunk_index(p)).collect();
        (0..self.next_chunk_index())
            .filter(|i| !have.contains(i))
            .map(|i| self.dir.join(format!("chunk-{i:06}.safetensors")))
            .collect()
    }

    pub(crate) fn next_chunk_index(&self) -> usize {
        self.chunks
            .iter()
            .filter_map(|p| chunk_index(p))
            .max()
            .map_or(0, |i| i + 1)
    }

    /// A fingerprint of what the dataset holds: the CRC-32 of its env, env config and spaces
    /// and of every chunk's name and stored checksum (read from the chunk headers alone, so it
    /// is cheap). It changes whenever a chunk is added, removed or rewritten; stages trained on
    /// a dataset record it to know when their input changed.
    pub fn fingerprint(&self) -> String {
        let mut h = crc32fast::Hasher::new();
        let identity = serde_json::json!([
            self.meta.env_id,
            self.meta.env_config,
            self.meta.observation_space,
            self.meta.action_space
        ]);
        h.update(identity.to_string().as_bytes());
        for path in &self.chunks {
            h.update(path.file_name().unwrap_or_default().as_encoded_bytes());
            // A chunk whose header cannot be read counts as damaged: its name still counts.
            let crc = stored_crc(path).unwrap_or_else(|| "damaged".into());
            h.update(crc.as_bytes());
        }
        format!("{:08x}", h.finalize())
    }

    /// Reads one chunk, checking its checksum and structure.
    pub fn read_chunk(&self, path: &Path) -> Result<Vec<Episode>, RecordError> {
        let bytes = std::fs::read(path).map_err(io_error("cannot read", path))?;
        decode_chunk(&self.meta, &bytes).map_err(|reason| RecordError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.0,
        })
    }

    /// Checks one chunk without decoding its episodes: its format, version and checksum, as
    /// [`Self::read_chunk`] does first (a truncated or corrupted chunk fails here too), and
    /// its episode index. Returns how many episodes it holds. Much cheaper than reading it:
    /// nothing is decompressed, and only this chunk's bytes are held.
    pub fn check_chunk(&self, path: &Path) -> Result<usize, RecordError> {
        let bytes = std::fs::read(path).map_err(io_error("cannot read", path))?;
        check_chunk_bytes(&bytes)
            .map(|c| c.lengths.len())
            .map_err(|reason| RecordError::Corrupt {
                path: path.to_path_buf(),
                reason: reason.0,
            })
    }

    /// Reads every chunk, skipping (and reporting) damaged ones.
    pub fn load(&self) -> LoadReport {
        let mut report = LoadReport::default();
        for path in &self.chunks {
            match self.read_chunk(path) {
                Ok(mut eps) => report.episodes.append(&mut eps),
                Err(e) => report.damaged.push((path.clone(), e)),
            }
        }
        report
    }
}

fn chunk_index(p: &Path) -> Option<usize> {
    p.file_name()?
        .to_str()?
        .strip_prefix("chunk-")?
        .strip_suffix(".safetensors")?
        .parse::<usize>()
        .ok()
}

/// The `crc32` a chunk's header stores, read without reading the data.
fn stored_crc(path: &Path) -> Option<String> {
    Some(header(path)?["__metadata__"]["crc32"].as_str()?.to_string())
}

/// Episodes in a chunk, from its header alone.
pub(crate) fn stored_episodes(path: &Path) -> Option<usize> {
    header(path)?["episode_length"]["shape"][0]
        .as_u64()
        .map(|n| n as usize)
}

/// A chunk's JSON header.
fn header(path: &Path) -> Option<serde_json::Value> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    serde_json::from_slice(&header).ok()
}

/// Why a chunk's contents do not decode (reported as a damaged chunk).
#[derive(Debug)]
struct Malformed(String);

impl From<String> for Malformed {
    fn from(message: String) -> Self {
        Malformed(message)
    }
}

impl From<&str> for Malformed {
    fn from(message: &str) -> Self {
        Malformed(message.to_string())
    }
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A chunk whose format, version and checksum hold, with its episode index (lengths and
/// seeds, which agree with each other).
struct CheckedChunk<'a> {
    tensors: SafeTensors<'a>,
    lengths: Vec<i64>,
    seeds: Vec<u64>,
}

/// Checks a chunk's header, format version and checksum and reads its episode index, without
/// decoding any column.
fn check_chunk_bytes(bytes: &[u8]) -> Result<CheckedChunk<'_>, Malformed> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| format!("bad header: {e}"))?;
    let info = header
        .metadata()
        .clone()
        .ok_or("no metadata in the header")?;
    if info.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(format!("not a {FORMAT} chunk").into());
    }
    let version: Option<u32> = info.get("version").and_then(|v| v.parse().ok());
    if !version.is_some_and(|v| (OLDEST_READABLE..=VERSION).contains(&v)) {
        return Err(format!(
            "chunk version {:?} is not one this build reads ({OLDEST_READABLE} to {VERSION})",
            info.get("version")
        )
        .into());
    }
    let expected = info.get("crc32").ok_or("no crc32 in the metadata")?;
    let data = data_section(bytes).map_err(|e| e.to_string())?;
    let actual = format!("{:08x}", crc32fast::hash(data));
    if &actual != expected {
        return Err(format!(
            "checksum mismatch (stored {expected}, computed {actual}): truncated or corrupted"
        )
        .into());
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| format!("bad tensors: {e}"))?;
    let tensor = |name: &str| {
        tensors
            .tensor(name)
            .map_err(|e| format!("tensor `{name}`: {e}"))
    };
    let lengths: Vec<i64> = le_i64(tensor("episode_length")?.data());
    let seeds: Vec<u64> = tensor("episode_seed")?
        .data()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    if lengths.len() != seeds.len() || lengths.iter().any(|&l| l < 0) {
        return Err("episode_length and episode_seed disagree".into());
    }
    Ok(CheckedChunk {
        tensors,
        lengths,
        seeds,
    })
}

fn decode_chunk(meta: &DatasetMeta, bytes: &[u8]) -> Result<Vec<Episode>, Malformed> {
    let CheckedChunk {
        tensors: st,
        lengths,
        seeds,
    } = check_chunk_bytes(bytes)?;
    let tensor = |name: &str| st.tensor(name).map_err(|e| format!("tensor `{name}`: {e}"));
    let n_steps: usize = lengths.iter().map(|&l| l as usize).sum();
    let n_obs = n_steps + lengths.len();
    let rewards: Vec<f64> = tensor("reward")?
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let terminated = tensor("terminated")?.data().to_vec();
    let truncated = tensor("truncated")?.data().to_vec();
    if rewards.len() != n_steps || terminated.len() != n_steps || truncated.len() != n_steps {
        return Err(format!(
            "per-step columns have {} / {} / {} rows, episode lengths add up to {n_steps}",
            rewards.len(),
            terminated.len(),
            truncated.len()
        )
        .into());
    }
    // Decompressed image columns live here for as long as the columns borrow them.
    let mut unpacked: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for name in st.names() {
        if let Some(column) = name.strip_suffix(".zlib") {
            let packed = tensor(name)?;
            let mut raw = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::ZlibDecoder::new(packed.data()),
                &mut raw,
            )
            .map_err(|e| format!("tensor `{name}` does not decompress: {e}"))?;
            unpacked.insert(column.to_string(), raw);
        }
    }
    let columns = |space: &Space, prefix: &str, rows: usize| -> Result<Columns<'_>, Malformed> {
        let mut cols = BTreeMap::new();
        for leaf in leaves(space, prefix) {
            let row_bytes = leaf.row_shape.iter().product::<usize>()
                * match leaf.kind {
                    LeafKind::F32 => 4,
                    LeafKind::U8 => 1,
                    LeafKind::I64 => 8,
                    LeafKind::Text => {
                        let name = super::offsets_name(&leaf.name);
                        let offsets = tensor(&name)?;
                        let bytes = tensor(&leaf.name)?;
                        let ends = le_i64(offsets.data());
                        let ordered = ends.first() == Some(&0)
                            && ends.windows(2).all(|w| w[0] <= w[1])
                            && ends.last() == Some(&(bytes.data().len() as i64));
                        if offsets.shape() != [rows + 1] || bytes.shape().len() != 1 || !ordered {
                            return Err(format!(
                                "text column `{}`: {} offsets for {rows} rows, not increasing \
                                 from 0 to its {} bytes",
                                leaf.name,
                                ends.len(),
                                bytes.data().len()
                            )
                            .into());
                        }
                        let offsets_leaf = super::Leaf {
                            name: name.clone(),
                            kind: LeafKind::I64,
                            row_shape: vec![],
                        };
                        cols.insert(name, (offsets_leaf, offsets.data()));
                        cols.insert(leaf.name.clone(), (leaf, bytes.data()));
                        continue;
                    }
                };
            if let Some(raw) = unpacked.get(&leaf.name) {
                if raw.len() != rows * row_bytes {
                    return Err(format!(
                        "column `{}` decompresses to {} bytes, expected {}",
                        leaf.name,
                        raw.len(),
                        rows * row_bytes
                    )
                    .into());
                }
                cols.insert(leaf.name.clone(), (leaf, raw.as_slice()));
                continue;
            }
            let t = tensor(&leaf.name)?;
            let mut shape = vec![rows];
            shape.extend(&leaf.row_shape);
            if t.shape() != shape.as_slice() {
                return Err(format!(
                    "tensor `{}` has shape {:?}, expected {shape:?}",
                    leaf.name,
                    t.shape()
                )
                .into());
            }
            cols.insert(leaf.name.clone(), (leaf, t.data()));
        }
        Ok(cols)
    };
    let obs_cols = columns(&meta.observation_space, "obs", n_obs)?;
    let act_cols = columns(&meta.action_space, "action", n_steps)?;
    let mut episodes = Vec::with_capacity(lengths.len());
    let (mut o, mut s) = (0usize, 0usize);
    for (&len, &seed) in lengths.iter().zip(&seeds) {
        let len = len as usize;
        let mut e = Episode::new(
            seed,
            decode_row(&meta.observation_space, "obs", &obs_cols, o)?,
        );
        for t in 0..len {
            e.push(
                decode_row(&meta.action_space, "action", &act_cols, s + t)?,
                decode_row(&meta.observation_space, "obs", &obs_cols, o + 1 + t)?,
                rewards[s + t],
                terminated[s + t] != 0,
                truncated[s + t] != 0,
            );
        }
        o += len + 1;
        s += len;
        episodes.push(e);
    }
    Ok(episodes)
}

type Columns<'a> = BTreeMap<String, (super::Leaf, &'a [u8])>;

fn le_i64(data: &[u8]) -> Vec<i64> {
    data.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

fn decode_row(
    space: &Space,
    prefix: &str,
    cols: &Columns<'_>,
    row: usize,
) -> Result<Value, Malformed> {
    if let Space::Dict(d) = space {
        let mut out = BTreeMap::new();
        for (k, s) in &d.spaces {
            out.insert(
                k.clone(),
                decode_row(s, &format!("{prefix}.{k}"), cols, row)?,
            );
        }
        return Ok(Value::Dict(out));
    }
    let (leaf, data) = cols
        .get(prefix)
        .ok_or_else(|| format!("missing column `{prefix}`"))?;
    if leaf.kind == LeafKind::Text {
        // The offsets were checked to increase from 0 to the column's length.
        let (_, offsets) = cols
            .get(&super::offsets_name(prefix))
            .ok_or_else(|| format!("missing offsets of `{prefix}`"))?;
        let at = |i: usize| {
            offsets
                .get(i * 8..i * 8 + 8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        };
        let (start, end) = at(row)
            .zip(at(row + 1))
            .ok_or_else(|| format!("text column `{prefix}` is too short"))?;
        let bytes = data
            .get(start..end)
            .ok_or_else(|| format!("text column `{prefix}` is too short"))?;
        return String::from_utf8(bytes.to_vec())
            .map(Value::Text)
            .map_err(|e| format!("text column `{prefix}` row {row} is not UTF-8: {e}").into());
    }
    let per_row: usize = leaf.row_shape.iter().product();
    let width = match leaf.kind {
        LeafKind::F32 => 4,
        LeafKind::U8 => 1,
        LeafKind::I64 | LeafKind::Text => 8,
    };
    let bytes = data
        .get(row * per_row * width..(row + 1) * per_row * width)
        .ok_or_else(|| format!("column `{prefix}` is too short"))?;
    Ok(match (space, leaf.kind) {
        (_, LeafKind::F32) => Value::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect(),
        ),
        (_, LeafKind::U8) => Value::U8(bytes.to_vec()),
        (Space::Discrete(_), LeafKind::I64) => Value::Int(le_i64(bytes)[0]),
        (_, LeafKind::I64 | LeafKind::Text) => Value::Ints(le_i64(bytes)),
    })
}

/// A fixed-length slice of an episode: `len` steps and the `len + 1` observations around them.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Index of the episode in the slice given to the sampler.
    pub episode: usize,
    /// First step of the window within the episode.
    pub start: usize,
    /// `len + 1` observations.
    pub observations: Vec<Value>,
    /// `len` actions.
    pub actions: Vec<Value>,
    /// `len` rewards.
    pub rewards: Vec<f64>,
    /// `len` terminated flags.
    pub terminated: Vec<bool>,
    /// `len` truncated flags.
    pub truncated: Vec<bool>,
}

/// Every window of `len` steps in a set of episodes, visited in a seeded random order.
pub struct WindowSampler<'a> {
    episodes: &'a [Episode],
    len: usize,
    order: Vec<(usize, usize)>,
}

impl<'a> WindowSampler<'a> {
    /// All windows of `len >= 1` steps (episodes shorter than `len` contribute none), shuffled
    /// with `seed`.
    pub fn new(episodes: &'a [Episode], len: usize, seed: u64) -> Self {
        let len = len.max(1);
        let mut order: Vec<(usize, usize)> = episodes
            .iter()
            .enumerate()
            .flat_map(|(i, e)| (0..(e.len() + 1).saturating_sub(len)).map(move |s| (i, s)))
            .collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        Self {
            episodes,
            len,
            order,
        }
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are no windows.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The windows in shuffled order.
    pub fn iter(&self) -> impl Iterator<Item = Window> + '_ {
        self.order.iter().map(|&(i, s)| {
            let e = &self.episodes[i];
            let r = s..s + self.len;
            Window {
                episode: i,
                start: s,
                observations: e.observations[s..s + self.len + 1].to_vec(),
                actions: e.actions[r.clone()].to_vec(),
                rewards: e.rewards[r.clone()].to_vec(),
                terminated: e.terminated[r.clone()].to_vec(),
                truncated: e.truncated[r].to_vec(),
            }
        })
    }
}
