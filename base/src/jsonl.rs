//! An append-only log of JSON records, one per line, each fsynced as it is written: the base
//! of every log whose records people keep (labels, events).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::IoError;

/// Errors of the JSON-lines log.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// Reading or writing the file failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A record could not be encoded, or a complete line is not a valid record.
    #[error("{}: line {line}: {message}", path.display())]
    Record {
        /// The log.
        path: PathBuf,
        /// 1-based line number (0 for a record being written).
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Appends records to a JSON-lines file. Each [`append`](Self::append) writes one whole line
/// and fsyncs it before returning, so a record reported written survives a crash. A file that
/// ends in a torn line (a crash mid-write) is repaired on open by cutting the torn tail, so the
/// next record starts on a line of its own.
pub struct JsonlWriter {
    file: File,
    path: PathBuf,
}

impl JsonlWriter {
    /// Opens (or creates) the log at `path` for appending.
    pub fn open(path: &Path) -> Result<Self, JsonlError> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| IoError::new("cannot create folder", dir, e))?;
        }
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| IoError::new("cannot open", path, e))?;
        let bytes = std::fs::read(path).map_err(|e| IoError::new("cannot read", path, e))?;
        if let Some(last) = bytes
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|i| i + 1)
            .or(Some(0))
            && last < bytes.len()
        {
            // A torn last record: cut it (it was never reported written).
            file.set_len(last as u64)
                .map_err(|e| IoError::new("cannot repair", path, e))?;
            file.sync_all()
                .map_err(|e| IoError::new("cannot sync", path, e))?;
        }
        if !existed && let Some(dir) = path.parent() {
            crate::atomic::sync_dir(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and fsyncs it.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), JsonlError> {
        let mut line = serde_json::to_vec(record).map_err(|e| JsonlError::Record {
            path: self.path.clone(),
            line: 0,
            message: format!("cannot encode: {e}"),
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| IoError::new("cannot append to", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| IoError::new("cannot sync", &self.path, e))?;
        Ok(())
    }
}

/// Reads every complete record of a JSON-lines log (a missing file is an empty log). A torn
/// last line (no newline: a crash mid-write) is ignored; a complete line that does not parse
/// is an error naming the line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, JsonlError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IoError::new("cannot read", path, e).into()),
    };
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut out = Vec::new();
    for (i, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push(
            serde_json::from_slice(line).map_err(|e| JsonlError::Record {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Label {
        pair: u32,
        choice: String,
    }

    #[test]
    fn appends_survive_reopening_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.jsonl");
        let mut w = JsonlWriter::open(&path).unwrap();
        w.append(&Label {
            pair: 1,
            choice: "left".into(),
        })
        .unwrap();
        w.append(&Label {
            pair: 2,
            choice: "right".into(),
        })
        .unwrap();
        drop(w);
        // A crash in the middle of a third record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"pair": 3, "cho"#).unwrap();
        drop(f);
        let read: Vec<Label> = read_jsonl(&path).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(
            read[1],
            Label {
                pair: 2,
                choice: "right".into()
            }
        );
        let mut w = JsonlWriter::open(&path).unwrap();
        w.append(&Label {
            pair: 3,
            choice: "equal".into(),
        })
        .unwrap();
        let read: Vec<Label> = read_jsonl(&path).unwrap();
        assert_eq!(read.iter().map(|l| l.pair).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_bad_complete_line_is_named_and_a_missing_log_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        assert!(read_jsonl::<Label>(&path).unwrap().is_empty());
        std::fs::write(&path, "{\"pair\":1,\"choice\":\"a\"}\nnot json\n").unwrap();
        let err = read_jsonl::<Label>(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("x.jsonl"), "{err}");
    }
}
