//! Atomic, durable file writes.

use std::io::Write;
use std::path::{Path, PathBuf};

/// An I/O error with the file it happened to and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {error}", path.display())]
pub struct IoError {
    /// What was being done (`cannot write`, `cannot rename into place`, ...).
    pub what: &'static str,
    /// The file or folder.
    pub path: PathBuf,
    /// The operating system's error (in the message, not repeated as a source).
    pub error: std::io::Error,
}

impl IoError {
    /// Wraps `source` with the action and the path.
    pub fn new(what: &'static str, path: &Path, error: std::io::Error) -> Self {
        Self {
            what,
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees either the old file or the
/// whole new one: the bytes go to a hidden temporary file in the same folder, which is
/// fsynced, renamed over `path`, and the folder is fsynced so the rename itself is durable.
/// Creates the folder if needed. On error the temporary file is removed and `path` is
/// untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| IoError::new("cannot create folder", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        // Errors name the file being written, not its temporary name.
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| IoError::new("cannot write", path, e))?;
        f.write_all(bytes)
            .map_err(|e| IoError::new("cannot write", path, e))?;
        f.sync_all()
            .map_err(|e| IoError::new("cannot sync", path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| IoError::new("cannot rename into place", path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir);
    Ok(())
}

/// Makes a rename or a new file in `dir` durable. Not every platform can open a folder, so
/// this is best effort.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn a_failed_write_names_the_path_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a folder: the rename fails, the folder survives.
        let target = dir.path().join("taken");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"x").unwrap();
        let err = write_atomic(&target, b"data").unwrap_err();
        assert!(err.to_string().contains("taken"), "{err}");
        assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"x");
        let stray = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("tmp")
            })
            .count();
        assert_eq!(stray, 0);
    }
}
