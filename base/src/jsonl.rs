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
/// next record starts on a line of its own. A last line that is a whole JSON value but lacks
/// its newline (written by hand, or by an editor that drops the final newline) is not torn: it
/// is kept, and completed with the newline.
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
        let last = complete_len(&bytes);
        if last < bytes.len() {
            if is_whole_value(&bytes[last..]) {
                // A whole record without its newline: complete the line.
                (&file)
                    .write_all(b"\n")
                    .map_err(|e| IoError::new("cannot repair", path, e))?;
            } else {
                // A torn last record: cut it (it was never reported written).
                file.set_len(last as u64)
                    .map_err(|e| IoError::new("cannot repair", path, e))?;
            }
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

/// The length of `bytes` up to the end of its last line that ends in a newline.
fn complete_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

/// Whether a last line with no newline is one whole JSON value (a record whose newline is
/// missing) rather than a torn one: a strict prefix of a JSON object is never a whole value.
fn is_whole_value(tail: &[u8]) -> bool {
    !tail.iter().all(u8::is_ascii_whitespace)
        && serde_json::from_slice::<serde::de::IgnoredAny>(tail).is_ok()
}

/// Reads every complete record of a JSON-lines log (a missing file is an empty log). A torn
/// last line (no newline, not a whole JSON value: a crash mid-write) is ignored; a last line
/// that is whole but lacks its newline counts as a line; a complete line that does not parse
/// is an error naming the line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, JsonlError> {
    let read = read_jsonl_lenient(path)?;
    match read.skipped.into_iter().next() {
        Some((line, message)) => Err(JsonlError::Record {
            path: path.to_path_buf(),
            line,
            message,
        }),
        None => Ok(read.records),
    }
}

/// What [`read_jsonl_lenient`] found: the records that parse, and what it left out.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonlRead<T> {
    /// Every complete line that parses, in order.
    pub records: Vec<T>,
    /// The 1-based line number of each record.
    pub lines: Vec<usize>,
    /// Complete lines that do not parse: (1-based line number, why).
    pub skipped: Vec<(usize, String)>,
    /// Bytes of a torn last line (no newline and not a whole JSON value: a crash mid-write),
    /// dropped; 0 when none.
    pub torn_bytes: usize,
}

/// Reads a JSON-lines log as [`read_jsonl`] does, but skips complete lines that do not parse
/// and reports them (with a torn last line) instead of failing: for logs people edit or
/// merge by hand, where one bad line must not hide the others.
pub fn read_jsonl_lenient<T: DeserializeOwned>(path: &Path) -> Result<JsonlRead<T>, JsonlError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(IoError::new("cannot read", path, e).into()),
    };
    let mut complete = complete_len(&bytes);
    if complete < bytes.len() && is_whole_value(&bytes[complete..]) {
        complete = bytes.len();
    }
    let mut read = JsonlRead {
        records: Vec::new(),
        lines: Vec::new(),
        skipped: Vec::new(),
        torn_bytes: bytes.len() - complete,
    };
    for (i, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(r) => {
                read.records.push(r);
                read.lines.push(i + 1);
            }
            Err(e) => read.skipped.push((i + 1, e.to_string())),
        }
    }
    Ok(read)
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
    fn a_whole_last_record_without_its_newline_is_kept_and_completed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.jsonl");
        // As an editor that drops the final newline leaves a hand-written label.
        std::fs::write(
            &path,
            "{\"pair\":1,\"choice\":\"a\"}\n{\"pair\":2,\"choice\":\"b\"}",
        )
        .unwrap();
        let read: JsonlRead<Label> = read_jsonl_lenient(&path).unwrap();
        assert_eq!(read.records.len(), 2);
        assert_eq!(read.lines, [1, 2]);
        assert_eq!(read.torn_bytes, 0);
        let mut w = JsonlWriter::open(&path).unwrap();
        w.append(&Label {
            pair: 3,
            choice: "equal".into(),
        })
        .unwrap();
        let read: Vec<Label> = read_jsonl(&path).unwrap();
        assert_eq!(read.iter().map(|l| l.pair).collect::<Vec<_>>(), [1, 2, 3]);
        // A strict prefix of that record is torn, not whole.
        std::fs::write(
            &path,
            "{\"pair\":1,\"choice\":\"a\"}\n{\"pair\":2,\"choice\":\"b\"",
        )
        .unwrap();
        let read: JsonlRead<Label> = read_jsonl_lenient(&path).unwrap();
        assert_eq!((read.records.len(), read.torn_bytes), (1, 22));
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

    #[test]
    fn the_lenient_reader_skips_bad_lines_and_reports_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        std::fs::write(
            &path,
            "{\"pair\":1,\"choice\":\"a\"}\ngarbage\n\n{\"pair\":2,\"choice\":\"b\"}\n{\"pair\":3,\"ch",
        )
        .unwrap();
        let read: JsonlRead<Label> = read_jsonl_lenient(&path).unwrap();
        assert_eq!(read.records.len(), 2);
        assert_eq!(read.records[1].pair, 2);
        assert_eq!(read.lines, [1, 4]);
        assert_eq!(read.skipped.len(), 1);
        assert_eq!(read.skipped[0].0, 2);
        assert_eq!(read.torn_bytes, 13);
        let none: JsonlRead<Label> = read_jsonl_lenient(&dir.path().join("missing")).unwrap();
        assert!(none.records.is_empty() && none.skipped.is_empty() && none.torn_bytes == 0);
    }
}
