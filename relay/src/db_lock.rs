//! One relay per database file: an advisory lock on `<db>.lock`.
//!
//! Two relays on one file would each keep their own document actors and
//! caches and answer peers from them, so the second one is refused at
//! start. The binary takes an exclusive OS advisory lock (`flock` on Unix,
//! `LockFileEx` on Windows, through [`std::fs::File::try_lock`]) on a lock
//! file next to the database and holds it for its lifetime; the file holds
//! the holder's process id, so the refusal can name it. The kernel drops
//! the lock when the process ends, however it ends (a relay killed with
//! SIGKILL leaves the file behind with its old pid, but not the lock), so
//! a stale lock file never keeps a relay from starting.
//!
//! Only the relay takes the lock: the `accord` CLI and apps open the
//! database as before (SQLite's own locking keeps their writes safe).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock on a relay database, held until dropped.
#[derive(Debug)]
pub struct DbLock {
    /// The open lock file; closing it releases the lock.
    _file: File,
    /// Where the lock file is.
    path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbLockError {
    /// Another process holds it.
    #[error(
        "database {db} is already in use by another accord-relay ({holder}; lock file {lock}): \
         stop that relay first, or give this one another --db"
    )]
    Held {
        /// The database file.
        db: String,
        /// The lock file.
        lock: String,
        /// "pid N", or why the pid is unknown.
        holder: String,
    },
    /// The lock file could not be opened or written.
    #[error("cannot lock database {db} through {lock}: {source}")]
    Io {
        /// The database file.
        db: String,
        /// The lock file.
        lock: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// The lock file of a database: `<db>.lock`, beside it.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl DbLock {
    /// Takes the lock of `db` without waiting, and writes this process's
    /// id into the lock file. Fails with [`DbLockError::Held`], naming the
    /// holder's pid, if another process holds it.
    pub fn acquire(db: &Path) -> Result<DbLock, DbLockError> {
        let path = lock_path(db);
        let io_error = |source| DbLockError::Io {
            db: db.display().to_string(),
            lock: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // the holder's pid stays readable until we hold the lock
            .open(&path)
            .map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(DbLockError::Held {
                    db: db.display().to_string(),
                    lock: path.display().to_string(),
                    holder: holder(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io_error(e)),
        }
        write_pid(&mut file).map_err(io_error)?;
        Ok(DbLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Replaces the lock file's content with this process's id.
fn write_pid(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()
}

/// "pid N" from the lock file, or why it is not known (the holder may
/// not have written it yet).
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let read = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.take(64).read_to_string(&mut text));
    match (read, text.trim().parse::<u32>()) {
        (Ok(_), Ok(pid)) => format!("pid {pid}"),
        (Ok(_), Err(_)) => "pid not recorded yet".to_owned(),
        (Err(e), _) => format!("pid unreadable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_names_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("relay.db");
        let first = DbLock::acquire(&db).expect("first lock");
        assert_eq!(first.path(), dir.path().join("relay.db.lock"));
        let err = DbLock::acquire(&db).expect_err("second lock");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())) && text.contains("relay.db"),
            "{text}"
        );
        drop(first);
        DbLock::acquire(&db).expect("free again once dropped");
    }
}
