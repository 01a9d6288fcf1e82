//! A document's change table, checked the way automerge 0.12 reads it
//! (`ChangeGraphCols::load` in `change_graph.rs`).
//!
//! A document stores no op count per change: Automerge derives it as the
//! change's max op minus the largest max op among its dependencies, where
//! a dependency is an index into the same table. Automerge indexes its
//! max-op vector with those indices without checking them and assumes the
//! dependency-count column is no longer than the others, so a forged table
//! makes it panic; the guard refuses such tables. Deriving the counts
//! needs each change's max op at hand: one `u64` per change, allocated
//! only after the change count has passed the budget.

use super::columns::{self, Encoding, Runs};
use super::table::Table;
use super::{Budget, GuardError};

/// The max-op column: id 1, delta-encoded.
const MAX_OP: u32 = (1 << 4) | 3;
/// The dependency-count column: id 4, a group.
const DEPS_COUNT: u32 = 4 << 4;
/// The dependency-index column: id 4, delta-encoded.
const DEPS_INDEX: u32 = (4 << 4) | 3;

/// Checks a document's change table of `changes` rows: every column
/// outside a group holds all the rows or none, every dependency index
/// points into the table, and no change claims more ops than
/// `budget.max_ops_per_change`.
pub(super) fn check(table: &Table<'_>, changes: u64, budget: &Budget) -> Result<(), GuardError> {
    if changes == 0 {
        return Ok(());
    }
    same_rows(table, changes)?;
    let max_ops = max_ops(table, changes)?;
    let mut counts = Values::new(table.column(DEPS_COUNT), Encoding::Unsigned);
    let mut deps = Values::new(table.column(DEPS_INDEX), Encoding::Delta);
    for &max_op in &max_ops {
        let mut start = 0;
        for _ in 0..counts.next("dependency count")?.unwrap_or(0) {
            let dep = deps
                .next("dependency index")?
                .ok_or_else(|| invalid("fewer dependencies than counted"))?;
            let dep_max = usize::try_from(dep)
                .ok()
                .and_then(|dep| max_ops.get(dep))
                .ok_or_else(|| invalid("dependency index outside the table"))?;
            start = start.max(*dep_max);
        }
        let ops = max_op
            .checked_sub(start)
            .ok_or_else(|| invalid("a change's max op is below its dependencies'"))?;
        if ops > budget.max_ops_per_change {
            return Err(GuardError::TooLarge {
                what: "operations in one change",
                limit: budget.max_ops_per_change,
                found: ops,
            });
        }
    }
    Ok(())
}

/// Checks that every column outside a group holds `changes` rows or none.
fn same_rows(table: &Table<'_>, changes: u64) -> Result<(), GuardError> {
    for (spec, data) in table.ungrouped() {
        let rows = columns::count(data, spec.encoding())?.rows;
        if rows != 0 && rows != changes {
            return Err(invalid(&format!(
                "column {:#x} holds {rows} rows, the table {changes}",
                spec.0
            )));
        }
    }
    Ok(())
}

/// Every change's max op, in table order.
fn max_ops(table: &Table<'_>, changes: u64) -> Result<Vec<u64>, GuardError> {
    let column = table
        .column(MAX_OP)
        .ok_or_else(|| invalid("document changes without a max-op column"))?;
    let mut values = Values::new(Some(column), Encoding::Delta);
    // `changes` has passed the budget; the cap only keeps an unlimited
    // budget from asking for an impossible capacity up front.
    let capacity = usize::try_from(changes.min(1 << 20)).unwrap_or(0);
    let mut max_ops = Vec::with_capacity(capacity);
    while let Some(value) = values.next("max op")? {
        if !(0..=i64::from(u32::MAX)).contains(&value) {
            return Err(invalid("max op outside 0..2^32"));
        }
        max_ops.push(value.unsigned_abs());
    }
    Ok(max_ops)
}

/// The values of a numeric column, one row at a time (delta columns
/// summed up). A missing column has no rows.
#[derive(Debug)]
struct Values<'a> {
    /// The column's runs.
    runs: Option<Runs<'a>>,
    /// Whether each value is a difference from the previous one.
    delta: bool,
    /// The current run's value, and how many of its rows are left.
    current: Option<(i64, u64)>,
    /// The last value produced (delta columns).
    last: i64,
}

impl<'a> Values<'a> {
    /// The values of `data` (if any), encoded as `encoding`.
    fn new(data: Option<&'a [u8]>, encoding: Encoding) -> Self {
        Values {
            runs: data.map(|d| Runs::new(d, encoding)),
            delta: encoding == Encoding::Delta,
            current: None,
            last: 0,
        }
    }

    /// The next row's value, or `None` after the last row. Nulls are
    /// invalid: Automerge's readers of these columns do not allow them.
    fn next(&mut self, what: &str) -> Result<Option<i64>, GuardError> {
        while !matches!(self.current, Some((_, left)) if left > 0) {
            let Some(runs) = self.runs.as_mut() else {
                return Ok(None);
            };
            let Some(run) = runs.next_run()? else {
                return Ok(None);
            };
            let value = run
                .value
                .ok_or_else(|| GuardError::invalid(format!("{what}: null in the column")))?;
            self.current = Some((value, run.count));
        }
        let Some((value, left)) = self.current else {
            return Ok(None);
        };
        self.current = Some((value, left - 1));
        if !self.delta {
            return Ok(Some(value));
        }
        self.last = self
            .last
            .checked_add(value)
            .ok_or_else(|| GuardError::invalid(format!("{what}: overflows")))?;
        Ok(Some(self.last))
    }
}

/// An `Invalid` error for a malformed change table.
fn invalid(reason: &str) -> GuardError {
    GuardError::invalid(format!("document change table: {reason}"))
}
