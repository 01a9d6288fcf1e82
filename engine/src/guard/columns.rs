//! Automerge's columnar encoding, read without materialising rows.
//!
//! A table (a change's ops, a document's ops, a document's changes) is a
//! list of column specs with byte lengths, followed by the columns' data.
//! A spec is a `u32`: the column id in the high bits, bit 3 set when the
//! column is DEFLATE-compressed, and a 3-bit type in the low bits. Row
//! counts come from the encodings: RLE columns are runs (`n > 0`: one value
//! repeated `n` times; `n < 0`: `-n` literal values; `0`: a count of
//! nulls), delta columns are RLE columns of differences, and boolean
//! columns are alternating run lengths starting with `false`. A group
//! column holds, per row, how many rows of the columns that follow it with
//! the same id belong to that row (an op's predecessors, a change's
//! dependencies). Counting a run costs one step however many rows it
//! claims, so walking a column costs time in proportion to its bytes.

use super::read::Reader;
use super::GuardError;

/// Most columns one table may declare. Automerge 0.12 knows 16 at most
/// and ignores the others, but keeps a record of every declared column,
/// so their number must not grow with the input.
pub(super) const MAX_COLUMNS: u64 = 64;

/// A column's spec as stored: id, compression flag and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Spec(pub(super) u32);

/// How a column's data is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    /// RLE of unsigned numbers (group counts, actor indices, integers,
    /// value metadata).
    Unsigned,
    /// RLE of signed differences.
    Delta,
    /// Alternating run lengths.
    Boolean,
    /// RLE of length-prefixed UTF-8 strings.
    String,
    /// Raw bytes, described by a value-metadata column: no rows of its own.
    Raw,
}

impl Spec {
    /// The column id (the bits above the type and compression bits).
    pub(super) fn id(self) -> u32 {
        self.0 >> 4
    }

    /// Whether the data is DEFLATE-compressed.
    pub(super) fn deflated(self) -> bool {
        self.0 & 0b1000 != 0
    }

    /// The spec with the compression bit cleared, which is how Automerge
    /// orders and compares columns.
    pub(super) fn normalized(self) -> u32 {
        self.0 & !0b1000
    }

    /// Whether this is a group column (per-row counts of grouped rows).
    pub(super) fn is_group(self) -> bool {
        self.0 & 0b111 == 0
    }

    /// How the data is encoded.
    pub(super) fn encoding(self) -> Encoding {
        match self.0 & 0b111 {
            3 => Encoding::Delta,
            4 => Encoding::Boolean,
            5 => Encoding::String,
            7 => Encoding::Raw,
            _ => Encoding::Unsigned,
        }
    }
}

/// One column's spec and its data length, as the metadata declares them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Declared {
    /// The column's spec.
    pub(super) spec: Spec,
    /// How many bytes of data it occupies.
    pub(super) len: u64,
}

/// Reads a table's column metadata: a count, then (spec, length) pairs,
/// in Automerge's order (sorted by normalized spec, no duplicates).
pub(super) fn read_layout(r: &mut Reader<'_>) -> Result<Vec<Declared>, GuardError> {
    let count = r.uleb("column count")?;
    if count > MAX_COLUMNS {
        return Err(GuardError::TooLarge {
            what: "columns in one table",
            limit: MAX_COLUMNS,
            found: count,
        });
    }
    let mut columns: Vec<Declared> = Vec::new();
    for _ in 0..count {
        let spec = Spec(r.uleb32("column spec")?);
        let len = r.uleb("column length")?;
        if let Some(last) = columns.last() {
            if last.spec.normalized() >= spec.normalized() {
                return Err(GuardError::invalid(
                    "columns out of order or duplicated".to_string(),
                ));
            }
        }
        columns.push(Declared { spec, len });
    }
    Ok(columns)
}

/// The total data length of `columns`.
pub(super) fn data_len(columns: &[Declared]) -> Result<u64, GuardError> {
    columns.iter().try_fold(0u64, |sum, c| {
        sum.checked_add(c.len)
            .ok_or_else(|| GuardError::invalid("column lengths overflow".to_string()))
    })
}

/// One run of a column: `count` rows holding `value` (`None` for nulls,
/// booleans and strings, whose values the guard never needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    /// How many rows the run covers.
    pub(super) count: u64,
    /// The value of each row, for numeric columns.
    pub(super) value: Option<i64>,
}

/// Iterates the runs of one column's data, one literal value at a time.
#[derive(Debug, Clone)]
pub(super) struct Runs<'a> {
    /// The data not yet read.
    data: Reader<'a>,
    /// The column's encoding.
    encoding: Encoding,
    /// Literal values announced but not yet read.
    literals: u64,
}

impl<'a> Runs<'a> {
    /// The runs of `data`, encoded as `encoding`.
    pub(super) fn new(data: &'a [u8], encoding: Encoding) -> Self {
        Runs {
            data: Reader::new(data),
            encoding,
            literals: 0,
        }
    }

    /// The next run, or `None` at the end of the data.
    pub(super) fn next_run(&mut self) -> Result<Option<Run>, GuardError> {
        if self.literals > 0 {
            self.literals -= 1;
            let value = self.value()?;
            return Ok(Some(Run { count: 1, value }));
        }
        if self.data.is_empty() || self.encoding == Encoding::Raw {
            return Ok(None);
        }
        if self.encoding == Encoding::Boolean {
            let count = self.data.uleb("boolean run")?;
            return Ok(Some(Run { count, value: None }));
        }
        match self.data.sleb("run length")? {
            n if n > 0 => {
                let value = self.value()?;
                Ok(Some(Run {
                    count: n.unsigned_abs(),
                    value,
                }))
            }
            0 => {
                let count = self.data.uleb("null run")?;
                Ok(Some(Run { count, value: None }))
            }
            n => {
                self.literals = n.unsigned_abs();
                self.next_run()
            }
        }
    }

    /// Reads one value of the column's type.
    fn value(&mut self) -> Result<Option<i64>, GuardError> {
        match self.encoding {
            Encoding::Unsigned => {
                let value = self.data.uleb("column value")?;
                // Only group counts and change-table values are ever used;
                // anything beyond i64 would be refused by them anyway.
                Ok(Some(i64::try_from(value).unwrap_or(i64::MAX)))
            }
            Encoding::Delta => Ok(Some(self.data.sleb("column value")?)),
            Encoding::String => {
                self.data.length_prefixed("string value")?;
                Ok(None)
            }
            Encoding::Boolean | Encoding::Raw => Ok(None),
        }
    }
}

/// Whether the first row of an RLE column (unsigned or string) is null;
/// an empty column is null throughout, as Automerge reads it.
pub(super) fn first_is_null(data: &[u8]) -> Result<bool, GuardError> {
    let mut r = Reader::new(data);
    while !r.is_empty() {
        match r.sleb("run length")? {
            0 => {
                if r.uleb("null run")? > 0 {
                    return Ok(true);
                }
            }
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// What a column holds: its rows, and the sum of its values (for group
/// columns, how many grouped rows the group claims).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Count {
    /// Rows in the column (saturating).
    pub(super) rows: u64,
    /// Sum of the values of all rows (saturating; negative values count
    /// as zero).
    pub(super) sum: u64,
}

/// Counts the rows of one column in time proportional to its bytes.
pub(super) fn count(data: &[u8], encoding: Encoding) -> Result<Count, GuardError> {
    let mut runs = Runs::new(data, encoding);
    let mut total = Count::default();
    while let Some(run) = runs.next_run()? {
        total.rows = total.rows.saturating_add(run.count);
        let value = run.value.map_or(0, |v| u64::try_from(v).unwrap_or(0));
        total.sum = total.sum.saturating_add(run.count.saturating_mul(value));
    }
    Ok(total)
}
