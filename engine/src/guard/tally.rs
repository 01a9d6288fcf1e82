//! The running totals of one batch, checked against its [`Budget`] after
//! every step so the walk stops at the first limit passed.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;

use super::inflate::inflate;
use super::table::Contents;
use super::{Budget, Footprint, GuardError, HEAP_PER_INFLATED_BYTE};

/// What one batch has used so far.
#[derive(Debug)]
pub(super) struct Tally<'b> {
    /// The limits.
    budget: &'b Budget,
    /// The totals so far.
    footprint: Footprint,
    /// Hashes of the distinct actor ids named so far (at most
    /// `max_actors + 1` of them). Keyed randomly per process, so a peer
    /// cannot craft colliding ids to be under-counted.
    actors: HashSet<u64>,
    /// The keys of those hashes.
    hasher: RandomState,
}

impl<'b> Tally<'b> {
    /// An empty tally against `budget`.
    pub(super) fn new(budget: &'b Budget) -> Self {
        Tally {
            budget,
            footprint: Footprint::default(),
            actors: HashSet::new(),
            hasher: RandomState::new(),
        }
    }

    /// The totals.
    pub(super) fn footprint(&self) -> Footprint {
        self.footprint
    }

    /// The budget.
    pub(super) fn budget(&self) -> &Budget {
        self.budget
    }

    /// Counts one chunk of `len` bytes (header included).
    pub(super) fn chunk(&mut self, len: usize) -> Result<(), GuardError> {
        self.footprint.chunks = self.footprint.chunks.saturating_add(1);
        self.inflated(len)
    }

    /// Inflates `compressed`, stopping as soon as the output would pass
    /// the budget, and counts the output.
    pub(super) fn inflate(&mut self, compressed: &[u8], what: &str) -> Result<Vec<u8>, GuardError> {
        let by_bytes = self.budget.max_inflated_bytes;
        let by_heap = self
            .budget
            .max_heap_bytes
            .saturating_sub(self.footprint.heap_estimate())
            / HEAP_PER_INFLATED_BYTE;
        let room = by_bytes
            .saturating_sub(self.footprint.inflated_bytes)
            .min(by_heap);
        match inflate(compressed, room, what) {
            Ok(out) => {
                self.inflated(out.len())?;
                Ok(out)
            }
            Err(GuardError::TooLarge { found, .. }) => {
                // Passing `room` passes a limit, which this reports.
                self.inflated(usize::try_from(found).unwrap_or(usize::MAX))?;
                Err(GuardError::TooLarge {
                    what: "inflated bytes",
                    limit: room,
                    found,
                })
            }
            Err(other) => Err(other),
        }
    }

    /// Counts `len` bytes that Automerge will hold once inflated.
    fn inflated(&mut self, len: usize) -> Result<(), GuardError> {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        self.footprint.inflated_bytes = self.footprint.inflated_bytes.saturating_add(len);
        self.check()
    }

    /// Counts an actor id, once however often it is named.
    pub(super) fn actor(&mut self, id: &[u8]) -> Result<(), GuardError> {
        if self.actors.insert(self.hasher.hash_one(id)) {
            self.footprint.actors = self.footprint.actors.saturating_add(1);
            self.check()?;
        }
        Ok(())
    }

    /// Counts `deps` dependency hashes of a change chunk.
    pub(super) fn dependencies(&mut self, deps: u64) -> Result<(), GuardError> {
        self.footprint.references = self.footprint.references.saturating_add(deps);
        self.check()
    }

    /// Counts one change chunk holding `ops`.
    pub(super) fn change(&mut self, ops: Contents) -> Result<(), GuardError> {
        within(
            "operations in one change",
            self.budget.max_ops_per_change,
            ops.rows,
        )?;
        self.footprint.changes = self.footprint.changes.saturating_add(1);
        self.ops(ops)
    }

    /// Counts a document chunk's change table.
    pub(super) fn document_changes(&mut self, changes: Contents) -> Result<(), GuardError> {
        let footprint = &mut self.footprint;
        footprint.changes = footprint.changes.saturating_add(changes.rows);
        footprint.references = footprint.references.saturating_add(changes.references);
        self.check()
    }

    /// Counts a table of ops and their references.
    pub(super) fn ops(&mut self, ops: Contents) -> Result<(), GuardError> {
        let footprint = &mut self.footprint;
        footprint.ops = footprint.ops.saturating_add(ops.rows);
        footprint.references = footprint.references.saturating_add(ops.references);
        self.check()
    }

    /// Checks every total against its limit, then the heap estimate.
    fn check(&self) -> Result<(), GuardError> {
        let (f, b) = (&self.footprint, self.budget);
        within("inflated bytes", b.max_inflated_bytes, f.inflated_bytes)?;
        within("operations", b.max_ops, f.ops)?;
        within("changes", b.max_changes, f.changes)?;
        within("actors", b.max_actors, f.actors)?;
        within(
            "estimated Automerge heap bytes",
            b.max_heap_bytes,
            f.heap_estimate(),
        )
    }
}

/// `Ok` when `found` is within `limit`, else the error naming `what`.
fn within(what: &'static str, limit: u64, found: u64) -> Result<(), GuardError> {
    if found > limit {
        return Err(GuardError::TooLarge { what, limit, found });
    }
    Ok(())
}
