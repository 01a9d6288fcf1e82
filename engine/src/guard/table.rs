//! A table's columns with their data (inflated when compressed), and what
//! they hold: rows, and the grouped rows that reference other ops or
//! changes.

use std::borrow::Cow;

use super::columns::{self, Declared, Spec};
use super::read::Reader;
use super::tally::Tally;
use super::GuardError;

/// The op tables' action column (id 4, unsigned).
const ACTION: u32 = (4 << 4) | 2;
/// The action of a mark's start and end.
const MARK: i64 = 7;
/// The op tables' mark name column (id 10, a string; null on a mark's end).
const MARK_NAME: u32 = (10 << 4) | 5;

/// One table: each column's spec and its (inflated) data.
#[derive(Debug)]
pub(super) struct Table<'a> {
    /// The columns in their stored order.
    columns: Vec<(Spec, Cow<'a, [u8]>)>,
}

/// What one table holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Contents {
    /// The most rows any column outside a group holds: the table's ops or
    /// changes.
    pub(super) rows: u64,
    /// Grouped rows: predecessors, successors or dependencies. For each
    /// group, the larger of what its counts claim and what its columns
    /// hold.
    pub(super) references: u64,
}

impl<'a> Table<'a> {
    /// Splits `data` among `layout`'s columns, inflating compressed ones
    /// within what `tally` still allows.
    pub(super) fn read(
        layout: &[Declared],
        data: &'a [u8],
        tally: &mut Tally<'_>,
    ) -> Result<Self, GuardError> {
        let mut reader = Reader::new(data);
        let mut columns = Vec::with_capacity(layout.len());
        for column in layout {
            let bytes = reader.take(column.len, "column data")?;
            let bytes = if column.spec.deflated() {
                Cow::Owned(tally.inflate(bytes, "compressed column")?)
            } else {
                Cow::Borrowed(bytes)
            };
            columns.push((column.spec, bytes));
        }
        Ok(Table { columns })
    }

    /// Splits `data`, none of it compressed, among `layout`'s columns.
    pub(super) fn plain(layout: &[Declared], data: &'a [u8]) -> Result<Self, GuardError> {
        let mut reader = Reader::new(data);
        let mut columns = Vec::with_capacity(layout.len());
        for column in layout {
            columns.push((
                column.spec,
                Cow::Borrowed(reader.take(column.len, "column data")?),
            ));
        }
        Ok(Table { columns })
    }

    /// The data of the column whose normalized spec is `spec`, if present.
    pub(super) fn column(&self, spec: u32) -> Option<&[u8]> {
        self.columns
            .iter()
            .find(|(s, _)| s.normalized() == spec)
            .map(|(_, data)| data.as_ref())
    }

    /// The columns outside any group, with their data.
    pub(super) fn ungrouped(&self) -> impl Iterator<Item = (Spec, &[u8])> {
        let mut group = None;
        self.columns.iter().filter_map(move |(spec, data)| {
            if group == Some(spec.id()) {
                return None;
            }
            group = spec.is_group().then_some(spec.id());
            Some((*spec, data.as_ref()))
        })
    }

    /// Whether the first op is the end of a mark: action 7 (mark) with no
    /// mark name (column 10, a string), as `op_set2/op.rs` tells them.
    pub(super) fn first_op_ends_a_mark(&self) -> Result<bool, GuardError> {
        let Some(actions) = self.column(ACTION) else {
            return Ok(false);
        };
        let mut runs = columns::Runs::new(actions, columns::Encoding::Unsigned);
        let first = loop {
            match runs.next_run()? {
                Some(run) if run.count == 0 => continue,
                run => break run,
            }
        };
        if first.and_then(|run| run.value) != Some(MARK) {
            return Ok(false);
        }
        match self.column(MARK_NAME) {
            Some(names) => columns::first_is_null(names),
            None => Ok(true),
        }
    }

    /// Counts rows and references, in time proportional to the bytes.
    pub(super) fn contents(&self) -> Result<Contents, GuardError> {
        let mut contents = Contents::default();
        let mut group: Option<Group> = None;
        for (spec, data) in &self.columns {
            let count = columns::count(data, spec.encoding())?;
            if let Some(open) = group.as_mut() {
                if open.id == spec.id() {
                    open.held = open.held.max(count.rows);
                    continue;
                }
                contents.references = contents.references.saturating_add(open.size());
                group = None;
            }
            contents.rows = contents.rows.max(count.rows);
            if spec.is_group() {
                group = Some(Group {
                    id: spec.id(),
                    claimed: count.sum,
                    held: 0,
                });
            }
        }
        if let Some(open) = group {
            contents.references = contents.references.saturating_add(open.size());
        }
        Ok(contents)
    }
}

/// A group column and the columns it governs, while they are counted.
#[derive(Debug)]
struct Group {
    /// The id shared by the group column and its grouped columns.
    id: u32,
    /// Grouped rows the counts claim in total.
    claimed: u64,
    /// The most rows any grouped column holds.
    held: u64,
}

impl Group {
    /// The grouped rows Automerge may build: whichever is larger.
    fn size(&self) -> u64 {
        self.claimed.max(self.held)
    }
}
