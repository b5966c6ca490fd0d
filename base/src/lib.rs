//! What every dreamgym crate shares, written once:
//!
//! - [`write_atomic`]: a file appears whole or not at all (temporary file, fsync, rename,
//!   fsync of the folder). Every file the project keeps is written through it.
//! - [`JsonlWriter`] / [`read_jsonl`]: an append-only log of JSON records, each fsynced as it
//!   is written; a record torn by a crash is ignored on reading, never half-read.
//! - [`FolderLock`]: one writer per folder (an OS lock on `<folder>/.lock`, released on any
//!   exit), and [`remove_stale_temporaries`] for what a killed writer left.
//! - [`derive_seed`]: one function `(seed, stream, index) → seed` with named [`Stream`]s, so
//!   that no two uses of one user seed draw from the same random numbers.

mod atomic;
mod jsonl;
mod lock;
mod seed;

pub use atomic::{IoError, write_atomic};
pub use jsonl::{JsonlError, JsonlRead, JsonlWriter, read_jsonl, read_jsonl_lenient};
pub use lock::{FolderLock, LOCK_FILE, LockError, is_temporary, remove_stale_temporaries};
pub use seed::derive_seed;
