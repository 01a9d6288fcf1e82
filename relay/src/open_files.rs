//! The process's open-file limit (`RLIMIT_NOFILE`), raised at start and
//! checked against `--max-connections`.
//!
//! Every connection is a socket, and a socket is an open file. The soft
//! limit is often 1,024 while `--max-connections` defaults to 10,000, so
//! without this a relay would start fine and then fail accepts with
//! `EMFILE` ("too many open files") long before its own limit. At start
//! the binary raises the soft limit to the hard limit (which an
//! unprivileged process may do) and refuses to start if
//! `--max-connections` plus [`MARGIN`] still does not fit, naming both
//! numbers and both fixes.

use std::io;

/// Open files the relay needs besides one per connection: about 20 at rest
/// (standard streams, the WebSocket and metrics listeners, the SQLite
/// database with its `-wal` and `-shm` files for the writing and the
/// reading connection, the runtime's epoll and eventfd, the signal pipe),
/// the rest for `/health` and `/metrics` requests and for connections
/// being told `too_many_connections`, each of which holds its socket
/// until the refusal is sent.
pub const MARGIN: u64 = 64;

/// The open-file limit once raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// What the process may open now (the soft limit).
    pub soft: u64,
    /// What the soft limit could be raised to without privileges.
    pub hard: u64,
}

/// Why the relay cannot start with its `--max-connections`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileLimitError {
    /// The limit, even raised, is below what the connections need.
    #[error(
        "--max-connections {max_connections} needs {needed} open files ({max_connections} \
         connections + {MARGIN} for the database, listeners and runtime), but this process may \
         open only {soft} (hard limit {hard}): raise the limit (`ulimit -n {needed}` in the shell \
         that starts the relay, or LimitNOFILE={needed} in its systemd unit), or start with \
         --max-connections {fits} or fewer"
    )]
    TooLow {
        /// `--max-connections`.
        max_connections: usize,
        /// Open files that needs.
        needed: u64,
        /// The soft limit after raising it.
        soft: u64,
        /// The hard limit.
        hard: u64,
        /// The largest `--max-connections` that fits.
        fits: u64,
    },
    /// The limit could not be read.
    #[error("cannot read the open-file limit (RLIMIT_NOFILE): {0}")]
    Read(#[source] io::Error),
}

/// Open files `max_connections` connections need.
pub fn needed(max_connections: usize) -> u64 {
    u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(MARGIN)
}

/// Checks that `max_connections` fit in a soft limit of `limit.soft`.
pub fn check(max_connections: usize, limit: FileLimit) -> Result<(), FileLimitError> {
    let needed = needed(max_connections);
    if needed <= limit.soft {
        return Ok(());
    }
    Err(FileLimitError::TooLow {
        max_connections,
        needed,
        soft: limit.soft,
        hard: limit.hard,
        fits: limit.soft.saturating_sub(MARGIN),
    })
}

/// Raises the soft open-file limit as far as the hard limit allows, then
/// checks that `max_connections` fit. A raise the system refuses is
/// logged and the check runs against the limit as it is.
#[cfg(unix)]
pub fn raise_for(max_connections: usize) -> Result<FileLimit, FileLimitError> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().map_err(FileLimitError::Read)?;
    // An unlimited hard limit is not a number setrlimit accepts for files
    // (Linux caps them at fs.nr_open): ask for what is needed instead.
    let target = if hard == rlimit::INFINITY {
        soft.max(needed(max_connections))
    } else {
        hard
    };
    let soft = if target > soft {
        match rlimit::increase_nofile_limit(target) {
            Ok(raised) => raised,
            Err(e) => {
                tracing::warn!(error = %e, soft, target, "cannot raise the open-file limit");
                soft
            }
        }
    } else {
        soft
    };
    let limit = FileLimit { soft, hard };
    check(max_connections, limit)?;
    Ok(limit)
}

/// Without `RLIMIT_NOFILE` there is nothing to raise or check.
#[cfg(not(unix))]
pub fn raise_for(_max_connections: usize) -> Result<FileLimit, FileLimitError> {
    Ok(FileLimit {
        soft: u64::MAX,
        hard: u64::MAX,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_and_the_margin_must_fit_in_the_soft_limit() {
        let limit = FileLimit {
            soft: 1024,
            hard: 4096,
        };
        assert!(check(1024 - 64, limit).is_ok(), "exactly fits");
        let err = check(10_000, limit).expect_err("too many");
        assert!(matches!(
            err,
            FileLimitError::TooLow {
                needed: 10_064,
                soft: 1024,
                hard: 4096,
                fits: 960,
                ..
            }
        ));
        let message = err.to_string();
        for part in [
            "--max-connections 10000 needs 10064 open files",
            "may open only 1024 (hard limit 4096)",
            "ulimit -n 10064",
            "--max-connections 960 or fewer",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        assert!(check(961, limit).is_err(), "one over");
    }

    #[test]
    fn a_tiny_limit_fits_no_connection_and_says_so_without_underflow() {
        let limit = FileLimit { soft: 10, hard: 10 };
        let err = check(1, limit).expect_err("the margin alone does not fit");
        assert!(matches!(err, FileLimitError::TooLow { fits: 0, .. }));
        assert_eq!(needed(usize::MAX), u64::MAX, "saturates");
    }

    #[cfg(unix)]
    #[test]
    fn raising_leaves_the_soft_limit_at_least_where_it_was() {
        let (soft_before, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
        let limit = raise_for(0).expect("0 connections fit any real limit");
        assert!(limit.soft >= soft_before && limit.soft <= hard.max(soft_before));
        assert_eq!(limit.hard, hard);
    }
}
