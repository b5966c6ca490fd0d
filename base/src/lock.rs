//! One writer per folder: an advisory lock on `<folder>/.lock`.
//!
//! The lock is the operating system's (`flock` on Linux, `LockFileEx` on Windows), so it is
//! released whenever its holder exits, including by `kill -9`: a stale `.lock` file never
//! blocks anyone. The file holds the holder's pid so that a second writer can say who has it.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The name of the lock file inside a locked folder.
pub const LOCK_FILE: &str = ".lock";

/// Why a folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "{} is in use by another dreamgym process{}; wait for it to finish or stop it, or \
         choose another folder",
        folder.display(),
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy {
        /// The folder.
        folder: PathBuf,
        /// The holder's pid, when it could be read.
        holder: Option<u32>,
    },
    /// The lock file could not be created or locked.
    #[error(transparent)]
    Io(#[from] crate::IoError),
}

/// An exclusive lock on a folder, held until dropped (or the process ends).
#[derive(Debug)]
pub struct FolderLock {
    folder: PathBuf,
    // Keeps the lock: closing the file releases it.
    _file: std::fs::File,
}

impl FolderLock {
    /// Creates `folder` if needed and takes its lock, or says who holds it.
    ///
    /// On Unix the lock is on the folder itself, so deleting `.lock` does not let a second
    /// writer in; `.lock` only tells others the holder's pid. Elsewhere the lock is on `.lock`.
    pub fn acquire(folder: &Path) -> Result<Self, LockError> {
        std::fs::create_dir_all(folder)
            .map_err(|e| crate::IoError::new("cannot create folder", folder, e))?;
        let path = folder.join(LOCK_FILE);
        let open_pid_file = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| crate::IoError::new("cannot open lock file", &path, e))
        };
        #[cfg(unix)]
        let locked = std::fs::File::open(folder)
            .map_err(|e| crate::IoError::new("cannot open folder", folder, e))?;
        #[cfg(not(unix))]
        let locked = open_pid_file()?;
        match locked.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                // The holder writes its pid right after locking: give it a moment.
                let mut holder = None;
                for _ in 0..20 {
                    let mut text = String::new();
                    if let Ok(mut f) = std::fs::File::open(&path) {
                        let _ = f.read_to_string(&mut text);
                    }
                    holder = text.trim().parse().ok();
                    if holder.is_some() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                return Err(LockError::Busy {
                    folder: folder.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(crate::IoError::new("cannot lock", folder, e).into());
            }
        }
        // Best effort: the pid only improves the message a second writer gets.
        if let Ok(mut file) = open_pid_file() {
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = write!(file, "{}", std::process::id());
            let _ = file.flush();
        }
        Ok(Self {
            folder: folder.to_path_buf(),
            _file: locked,
        })
    }

    /// The locked folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }
}

/// Removes the temporary files that [`write_atomic`](crate::write_atomic) leaves when its
/// process is killed mid-write (`.<name>.tmp-<pid>`) from `folder`; returns how many. Call it
/// only while holding the folder's [`FolderLock`], so that no live writer's file is removed.
pub fn remove_stale_temporaries(folder: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| is_temporary(&e.file_name().to_string_lossy()))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Whether a file name is one of [`write_atomic`](crate::write_atomic)'s temporaries.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path()).unwrap();
        assert_eq!(first.folder(), dir.path());
        // A second open file description conflicts even within one process.
        let err = FolderLock::acquire(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(matches!(err, LockError::Busy { .. }));
        // Deleting the pid file does not let a second writer in.
        std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        assert!(FolderLock::acquire(dir.path()).is_err());
        drop(first);
        let again = FolderLock::acquire(dir.path()).unwrap();
        drop(again);
    }

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".chunk-000001.safetensors.tmp-42"), b"x").unwrap();
        std::fs::write(dir.path().join("chunk-000000.safetensors"), b"keep").unwrap();
        std::fs::write(dir.path().join(".lock"), b"").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()), 1);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".lock", "chunk-000000.safetensors"]);
    }
}
