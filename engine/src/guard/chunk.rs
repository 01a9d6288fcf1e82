//! Automerge's storage chunks, walked the way `Automerge::load` and
//! `load_incremental` parse them (automerge 0.12, `storage/chunk.rs`,
//! `change.rs`, `document.rs`).
//!
//! A chunk is the magic bytes `85 6f 4a 83`, a 4-byte checksum, a type
//! byte and a LEB128 body length, then the body:
//!
//! - type 1, a change: dependency hashes, actor, seq, start op, time,
//!   message, other actors, the op table's column layout, the op columns,
//!   then extra bytes to the end. Its columns are never compressed.
//! - type 2, a compressed change: the body of a type-1 chunk as a raw
//!   DEFLATE stream.
//! - type 0, a document: actors, head hashes, the change table's layout,
//!   the op table's layout, the change columns, the op columns, and
//!   optionally one index per head. Any column may be DEFLATE-compressed
//!   (bit 3 of its spec).
//! - type 3, a bundle: experimental in automerge 0.12, produced only by
//!   `Automerge::bundle`, which Accord never calls. Refused.

use super::columns::{data_len, read_layout};
use super::history;
use super::read::Reader;
use super::table::Table;
use super::tally::Tally;
use super::GuardError;

/// The first four bytes of every chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// The length of a change hash.
const HASH_LEN: u64 = 32;

/// Reads one chunk from `r` and counts what it holds into `tally`.
pub(super) fn inspect_chunk(r: &mut Reader<'_>, tally: &mut Tally<'_>) -> Result<(), GuardError> {
    let before = r.rest().len();
    if r.take(4, "magic bytes")? != MAGIC {
        return Err(GuardError::invalid(
            "not an Automerge chunk (bad magic bytes)".to_string(),
        ));
    }
    r.take(4, "checksum")?;
    let kind = r.byte("chunk type")?;
    let body = r.length_prefixed("chunk body")?;
    tally.chunk(before - r.rest().len())?;
    match kind {
        0 => document(body, tally),
        1 => change(body, tally),
        2 => {
            let inflated = tally.inflate(body, "compressed change")?;
            change(&inflated, tally)
        }
        3 => Err(GuardError::invalid(
            "bundle chunks (experimental in automerge 0.12) are not accepted".to_string(),
        )),
        other => Err(GuardError::invalid(format!("unknown chunk type {other}"))),
    }
}

/// Reads one chunk's header from `r` and skips its body, refusing a type
/// other than a document, a change or a compressed change.
pub(super) fn check_header(r: &mut Reader<'_>) -> Result<(), GuardError> {
    if r.take(4, "magic bytes")? != MAGIC {
        return Err(GuardError::invalid(
            "not an Automerge chunk (bad magic bytes)".to_string(),
        ));
    }
    r.take(4, "checksum")?;
    let kind = r.byte("chunk type")?;
    match kind {
        0..=2 => {}
        3 => {
            return Err(GuardError::invalid(
                "a bundle chunk (type 3), which Accord never stores".to_string(),
            ))
        }
        other => return Err(GuardError::invalid(format!("unknown chunk type {other}"))),
    }
    let body = r.length_prefixed("chunk body")?;
    // Only a positive finding counts: a body this reader cannot follow is
    // left to Automerge to report.
    if kind == 1 && first_op_ends_a_mark(body).unwrap_or(false) {
        return Err(ends_a_mark());
    }
    Ok(())
}

/// Whether a change's body (type 1) starts at op 1 with the end of a mark
/// (see `change`), reading only its header and two columns.
fn first_op_ends_a_mark(body: &[u8]) -> Result<bool, GuardError> {
    let mut r = Reader::new(body);
    for _ in 0..r.uleb("dependency count")? {
        r.take(HASH_LEN, "dependency hash")?;
    }
    r.length_prefixed("actor id")?;
    r.uleb("seq")?;
    if r.uleb("start op")? != 1 {
        return Ok(false);
    }
    r.sleb("timestamp")?;
    r.length_prefixed("message")?;
    for _ in 0..r.uleb("actor count")? {
        r.length_prefixed("actor id")?;
    }
    let layout = read_layout(&mut r)?;
    if layout.iter().any(|c| c.spec.deflated()) {
        return Ok(false);
    }
    let data = r.take(data_len(&layout)?, "op columns")?;
    Table::plain(&layout, data)?.first_op_ends_a_mark()
}

/// The refusal of a change whose first op, op 1, ends a mark.
fn ends_a_mark() -> GuardError {
    GuardError::invalid(
        "change whose first op (op 1) ends a mark that cannot have started".to_string(),
    )
}

/// The body of a change chunk (type 1, or type 2 once inflated).
fn change(body: &[u8], tally: &mut Tally<'_>) -> Result<(), GuardError> {
    let mut r = Reader::new(body);
    let deps = r.uleb("dependency count")?;
    for _ in 0..deps {
        r.take(HASH_LEN, "dependency hash")?;
    }
    tally.dependencies(deps)?;
    tally.actor(r.length_prefixed("actor id")?)?;
    r.uleb("seq")?;
    let start_op = r.uleb("start op")?;
    if start_op == 0 {
        return Err(GuardError::invalid("change with start op 0".to_string()));
    }
    r.sleb("timestamp")?;
    r.length_prefixed("message")?;
    for _ in 0..r.uleb("actor count")? {
        tally.actor(r.length_prefixed("actor id")?)?;
    }
    let layout = read_layout(&mut r)?;
    if layout.iter().any(|c| c.spec.deflated()) {
        return Err(GuardError::invalid(
            "change chunk with compressed columns".to_string(),
        ));
    }
    let data = r.take(data_len(&layout)?, "op columns")?;
    // What follows the op columns is the change's extra bytes.
    let table = Table::read(&layout, data, tally)?;
    // Automerge takes the op before a mark's end for its start: before op
    // 1 there is none, and automerge 0.12 built with debug assertions
    // fails an assertion on that id twice, the second time while
    // unwinding, which aborts the process (found by fuzzing).
    if start_op == 1 && table.first_op_ends_a_mark()? {
        return Err(ends_a_mark());
    }
    tally.change(table.contents()?)
}

/// The body of a document chunk.
fn document(body: &[u8], tally: &mut Tally<'_>) -> Result<(), GuardError> {
    let mut r = Reader::new(body);
    for _ in 0..r.uleb("actor count")? {
        tally.actor(r.length_prefixed("actor id")?)?;
    }
    let heads = r.uleb("head count")?;
    for _ in 0..heads {
        r.take(HASH_LEN, "head hash")?;
    }
    let change_layout = read_layout(&mut r)?;
    let op_layout = read_layout(&mut r)?;
    let change_data = r.take(data_len(&change_layout)?, "change columns")?;
    let op_data = r.take(data_len(&op_layout)?, "op columns")?;
    if !r.is_empty() {
        for _ in 0..heads {
            r.uleb("head index")?;
        }
        if !r.is_empty() {
            return Err(GuardError::invalid(
                "bytes left over after the document".to_string(),
            ));
        }
    }
    let changes = Table::read(&change_layout, change_data, tally)?;
    let contents = changes.contents()?;
    tally.document_changes(contents)?;
    history::check(&changes, contents.rows, tally.budget())?;
    drop(changes);
    let ops = Table::read(&op_layout, op_data, tally)?.contents()?;
    tally.ops(ops)
}
