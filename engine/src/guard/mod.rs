//! The guard: measures what peer-supplied Automerge bytes would expand to,
//! before Automerge sees them.
//!
//! Automerge (0.12) trusts the sizes written in its storage format. It
//! inflates compressed chunks and columns with an unbounded read before
//! any checksum check, and builds per-row structures for columns whose
//! run-length encoding can claim billions of rows in a few bytes: a
//! 237-byte document legitimately holds 20 000 changes, and a forged one
//! of the same size can claim 10¹² ops. [`inspect`] walks the same bytes
//! without building anything and refuses them when they would pass a
//! [`Budget`]; [`inspect_message`] does the same for a sync message.
//! Sans-IO: no sockets, no storage, no Automerge document.
//!
//! # What is counted and bounded
//!
//! - **Inflated bytes**: every chunk's bytes plus what its compressed
//!   parts inflate to (Automerge keeps both). Inflation runs the decoder
//!   Automerge uses, in steps, and stops as soon as the total passes the
//!   budget; its buffer never exceeds the room left plus 64 KiB.
//! - **Changes**: one per change chunk; a document's change-table rows.
//! - **Ops**: a change chunk's op rows (Automerge's `Change::len`); a
//!   document's op rows (its `stats().num_ops`, which omits deletions:
//!   those are stored as successors, counted below). Rows are summed run
//!   by run, never one at a time; a table's rows are the most any of its
//!   columns holds, so a column claiming more rows than its neighbours
//!   counts in full. Also checked per change: a change chunk's rows, and
//!   the op count a document derives for each change from its max ops.
//! - **References**: rows of grouped columns (an op's predecessors or
//!   successors, a change's dependencies), whichever is larger of what the
//!   group counts claim and what the grouped columns hold.
//! - **Actors**: distinct actor ids named anywhere in the batch.
//! - **The heap estimate**: the sum of those counts weighted by what each
//!   costs Automerge, plus changes × actors: Automerge keeps vector clocks
//!   of 4 bytes per actor for many of its changes (a document with 40 000
//!   changes by 4 000 actors took 533 MB to load). A batch can push every
//!   count to its limit at once, so this sum is the limit that bounds
//!   memory; the single limits give precise errors for absurd claims.
//!   The estimate is a worst case: clocks cost up to 3.7 bytes per entry
//!   once actors make ten or more changes each, but only ~0.2 when they
//!   make one or two, so a batch of 10 000 changes by 10 000 different
//!   actors is estimated at ~400 MB and refused by the default budget.
//!
//! # Other sizes Automerge trusts, and what the guard does about them
//!
//! - Counts of hashes, actors and columns: parsed one by one, so bounded
//!   by the bytes present; actors are bounded by `max_actors` and columns
//!   by a constant (64 per table), since Automerge keeps a record of each.
//! - Literal runs and string lengths: bounded by the bytes present.
//! - A document's dependency indices and column lengths: Automerge
//!   indexes with them unchecked (and panics); the guard refuses tables
//!   where they disagree (see `history.rs`).
//! - The `have` bloom filters of a sync message (`sync/bloom.rs`): each
//!   lookup allocates a vector of `num_probes` (a peer-chosen `u32`)
//!   entries and loops that many times, and a filter with entries but no
//!   bits divides by zero; every `have` is checked against every change
//!   of ours. [`inspect_message`] allows at most 4 filters of at most 32
//!   probes (Automerge writes one filter of 7 probes) and refuses
//!   filters without bits.
//! - Not bounded here: what the batch costs on top of the document it is
//!   applied to (an existing document's actors enlarge every new clock;
//!   changes whose dependencies are missing wait in Automerge's queue
//!   across batches). Those need a per-document budget.
//!
//! # Bytes the guard cannot parse
//!
//! Automerge applies the chunks before the first one it cannot parse and
//! silently drops the rest (`load_incremental`), or fails (`load`); either
//! way it parses, and inflates, that bad chunk first. The guard refuses
//! the whole batch with [`GuardError::Invalid`] instead: a peer that sends
//! malformed bytes is broken or hostile, and refusing is the only answer
//! that never expands anything unmeasured. Where validity does not affect
//! sizes the guard is more lenient than Automerge (it checks no checksums,
//! UTF-8 or canonical encodings), so what Automerge loads is not refused
//! as invalid (the property test checks this on random documents), with
//! two exceptions: bundle chunks (type 3, an experimental format Accord
//! never produces) and change tables Automerge would panic on.

mod chunk;
mod columns;
// Forged chunks and bombs: the guard's tests, and `fuzzing` (which lets
// the relay's tests send a bomb to a real relay), use them.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod forge;
mod history;
mod inflate;
#[cfg(test)]
mod props;
mod read;
mod table;
mod tally;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use automerge::sync::Message;

use self::read::Reader;
use self::tally::Tally;

/// Most `have` entries (bloom filters) a sync message may carry.
const MAX_HAVES: u64 = 4;
/// Most probes a bloom filter may ask for.
const MAX_BLOOM_PROBES: u64 = 32;

// Automerge 0.12's peak heap per unit while `load_incremental` or
// `receive_sync_message` loads a batch into an empty document, measured
// (debug build, a counting allocator) on documents, change chunks and
// sync messages of 1 000 to 150 000 ops, and rounded up: ~6.6 bytes per
// byte of data (5.6 through `load_incremental`; a sync message's chunks
// are copied once more to be joined), ~600 bytes per op (695 for ops
// creating objects), ~80-100 per reference, ~1 650 per change, and up to
// ~3.7 per clock entry (changes × actors) once actors make several
// changes each. Across those shapes the peak stayed at 15-93% of
// `heap_estimate`.
/// Estimated heap per byte of inflated data (measured up to 6.6).
const HEAP_PER_INFLATED_BYTE: u64 = 8;
/// Estimated heap per op (measured up to ~700).
const HEAP_PER_OP: u64 = 768;
/// Estimated heap per reference (measured ~100).
const HEAP_PER_REFERENCE: u64 = 128;
/// Estimated heap per change, besides its ops (measured ~1 650).
const HEAP_PER_CHANGE: u64 = 2048;
/// Estimated heap per actor, besides clocks (not measured apart from
/// changes; generous).
const HEAP_PER_ACTOR: u64 = 512;
/// Estimated heap per vector clock entry (measured up to 3.7).
const HEAP_PER_CLOCK_ENTRY: u64 = 4;
/// Estimated heap of loading anything at all.
const HEAP_BASE: u64 = 1024 * 1024;

/// What one batch of peer-supplied Automerge bytes may expand to.
///
/// An attacker can push every count to its limit in the same batch (row
/// counts cost a few bytes each way), so the limits that matter are on
/// the sum: `max_heap_bytes` bounds [`Footprint::heap_estimate`], the heap
/// Automerge needs at its peak to load the batch. The other limits are
/// hard caps on single counts, each also within the default heap budget
/// on its own, that give a precise error for absurd claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most heap Automerge may need to load the batch, as estimated by
    /// [`Footprint::heap_estimate`].
    pub max_heap_bytes: u64,
    /// Most bytes the batch may hold once every compressed part is
    /// inflated, compressed parts counted too (Automerge keeps both).
    pub max_inflated_bytes: u64,
    /// Most ops in the batch.
    pub max_ops: u64,
    /// Most ops in one change (a change is applied, or refused, whole).
    pub max_ops_per_change: u64,
    /// Most changes in the batch.
    pub max_changes: u64,
    /// Most distinct actor ids the batch may name.
    pub max_actors: u64,
}

impl Default for Budget {
    /// 256 MiB of estimated heap. Within it: 24 MiB inflated (~192 MiB
    /// of heap), 250 000 ops (~190 MiB), 100 000 ops per change (a 100 KB
    /// paste into a text; a user's edit usually makes a handful),
    /// 100 000 changes (~200 MiB), 4 096 actors.
    fn default() -> Self {
        Budget {
            max_heap_bytes: 256 * 1024 * 1024,
            max_inflated_bytes: 24 * 1024 * 1024,
            max_ops: 250_000,
            max_ops_per_change: 100_000,
            max_changes: 100_000,
            max_actors: 4_096,
        }
    }
}

/// What a batch of Automerge bytes claims, measured without building it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Storage chunks.
    pub chunks: u64,
    /// Changes: one per change chunk, plus each document's changes.
    pub changes: u64,
    /// Ops: change chunks' ops plus documents' stored ops.
    pub ops: u64,
    /// Predecessor, successor and dependency references.
    pub references: u64,
    /// Distinct actor ids named.
    pub actors: u64,
    /// Bytes once inflated, compressed parts counted too.
    pub inflated_bytes: u64,
}

impl Footprint {
    /// The heap automerge 0.12 needs at its peak to load these bytes into
    /// an empty document, estimated from measured per-unit costs with a
    /// margin: 8 bytes per inflated byte, 768 per op, 128 per reference,
    /// 2 KiB per change, 512 per actor, 4 per clock entry (changes ×
    /// actors), plus 1 MiB. The fuzz target `guard` checks that loading
    /// never needs more.
    pub fn heap_estimate(&self) -> u64 {
        [
            (self.inflated_bytes, HEAP_PER_INFLATED_BYTE),
            (self.ops, HEAP_PER_OP),
            (self.references, HEAP_PER_REFERENCE),
            (self.changes, HEAP_PER_CHANGE),
            (self.actors, HEAP_PER_ACTOR),
            (
                self.changes.saturating_mul(self.actors),
                HEAP_PER_CLOCK_ENTRY,
            ),
        ]
        .iter()
        .fold(HEAP_BASE, |sum, &(n, cost)| {
            sum.saturating_add(n.saturating_mul(cost))
        })
    }
}

/// Why peer-supplied bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The bytes would expand past a limit of the budget.
    #[error("{what}: {found} exceeds the limit of {limit}")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// The budget's limit for it.
        limit: u64,
        /// How many were counted when the guard stopped (for inflated
        /// bytes, how far inflation got: at least `limit + 1`).
        found: u64,
    },
    /// The bytes are not Automerge data the guard can measure.
    #[error("malformed Automerge data: {reason}")]
    Invalid {
        /// What was wrong, and where.
        reason: String,
    },
}

impl GuardError {
    /// An [`GuardError::Invalid`] with `reason`.
    fn invalid(reason: String) -> Self {
        GuardError::Invalid { reason }
    }
}

/// Measures any concatenation of Automerge chunks (what `Automerge::load`
/// and `load_incremental` accept) against one budget.
pub fn inspect(bytes: &[u8], budget: &Budget) -> Result<Footprint, GuardError> {
    let mut tally = Tally::new(budget);
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        chunk::inspect_chunk(&mut reader, &mut tally)?;
    }
    Ok(tally.footprint())
}

/// Checks that `bytes` are whole chunks of the types Accord stores (a
/// document, a change, a compressed change), reading only their headers:
/// far cheaper than [`inspect`], for bytes this process wrote itself but
/// that may have been damaged since. Automerge 0.12 decodes a bundle
/// chunk's (type 3) columns before it checks the checksum, and a damaged
/// one can make it panic or allocate gigabytes (found by fuzzing). A
/// change whose first op ends a mark is refused too: automerge 0.12 built
/// with debug assertions aborts on it (it needs a valid checksum, so only
/// a forged chunk gets there).
pub(crate) fn check_stored_chunks(bytes: &[u8]) -> Result<(), GuardError> {
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        chunk::check_header(&mut reader)?;
    }
    Ok(())
}

/// Measures a sync message: its bloom filters, and all its chunks together
/// against one budget (Automerge joins them and loads them as one batch).
pub fn inspect_message(message: &Message, budget: &Budget) -> Result<Footprint, GuardError> {
    check_haves(message)?;
    let joined: Cow<'_, [u8]> = match message.changes.len() {
        0 => Cow::Borrowed(&[]),
        1 => Cow::Borrowed(message.changes.iter().next().unwrap_or_default()),
        _ => Cow::Owned(message.changes.iter().flatten().copied().collect()),
    };
    inspect(&joined, budget)
}

/// Checks the number and shape of a message's bloom filters.
fn check_haves(message: &Message) -> Result<(), GuardError> {
    let haves = u64::try_from(message.have.len()).unwrap_or(u64::MAX);
    if haves > MAX_HAVES {
        return Err(GuardError::TooLarge {
            what: "bloom filters",
            limit: MAX_HAVES,
            found: haves,
        });
    }
    for have in &message.have {
        let bytes = have.bloom.to_bytes();
        let mut r = Reader::new(&bytes);
        if r.is_empty() || r.uleb32("bloom entries")? == 0 {
            continue;
        }
        r.uleb32("bloom bits per entry")?;
        let probes = u64::from(r.uleb32("bloom probes")?);
        if probes > MAX_BLOOM_PROBES {
            return Err(GuardError::TooLarge {
                what: "bloom filter probes",
                limit: MAX_BLOOM_PROBES,
                found: probes,
            });
        }
        let bits = r.rest().len();
        if bits == 0 || bits > (u32::MAX / 8) as usize {
            return Err(GuardError::invalid(format!(
                "bloom filter with entries and {bits} bytes of bits"
            )));
        }
    }
    Ok(())
}
