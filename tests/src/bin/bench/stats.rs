//! Results: one measured figure per system, medians over repetitions, and
//! the table rows that pair Accord's figure with the reference's.

use comfy_table::{presets, Cell, CellAlignment, Table};

/// What one system scored on one metric, over all repetitions.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    /// The median of the repetitions' values.
    Value(f64),
    /// A repetition ran past the time cap: seconds, and the phase.
    OverCap(u64, &'static str),
    /// The workload cannot be expressed faithfully on this system.
    NotApplicable,
    /// The run failed; the reason is printed below the table.
    Failed,
}

impl Figure {
    /// The median of `values` (the lower middle one for an even count).
    pub fn median(mut values: Vec<f64>) -> Figure {
        if values.is_empty() {
            return Figure::Failed;
        }
        values.sort_by(f64::total_cmp);
        Figure::Value(values[(values.len() - 1) / 2])
    }

    fn value(&self) -> Option<f64> {
        match self {
            Figure::Value(v) => Some(*v),
            _ => None,
        }
    }

    fn render(&self, unit: &str) -> String {
        match self {
            Figure::Value(v) => format!("{} {unit}", number(*v)),
            Figure::OverCap(cap, phase) => format!("> {cap} s cap ({phase})"),
            Figure::NotApplicable => "n/a".into(),
            Figure::Failed => "failed".into(),
        }
    }
}

/// Which direction of a metric is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Times, bytes, memory.
    Lower,
    /// Throughput.
    Higher,
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    /// `W1 K=20 N=1000`, say.
    pub workload: String,
    /// What is measured, e.g. `total_s`.
    pub metric: String,
    /// The unit printed after each figure.
    pub unit: &'static str,
    /// Which direction is good.
    pub better: Better,
    /// Accord's figure.
    pub accord: Figure,
    /// The reference system's figure.
    pub reference: Figure,
    /// What the reference is (`samod 0.16`, `bare loop`).
    pub reference_name: &'static str,
}

impl Row {
    /// Accord's figure divided by the reference's, when both exist.
    pub fn ratio(&self) -> Option<f64> {
        let (a, r) = (self.accord.value()?, self.reference.value()?);
        (r != 0.0).then_some(a / r)
    }

    /// Whether Accord is ahead of the reference on this row.
    pub fn ahead(&self) -> Option<bool> {
        if let (Some(_), Figure::OverCap(..)) = (self.accord.value(), &self.reference) {
            return Some(true);
        }
        let ratio = self.ratio()?;
        Some(match self.better {
            Better::Lower => ratio < 1.0,
            Better::Higher => ratio > 1.0,
        })
    }
}

/// Prints numbers with three significant digits (and no exponent).
pub fn number(v: f64) -> String {
    let abs = v.abs();
    if abs >= 100.0 {
        format!("{v:.0}")
    } else if abs >= 10.0 {
        format!("{v:.1}")
    } else if abs >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The results as a table (Markdown when `markdown` is set).
pub fn table(rows: &[Row], markdown: bool) -> String {
    let mut table = Table::new();
    table.load_style(if markdown {
        presets::ASCII_MARKDOWN
    } else {
        presets::UTF8_FULL_CONDENSED
    });
    table.set_header(vec![
        "workload",
        "metric",
        "Accord",
        "reference",
        "ref. system",
        "Accord ÷ ref.",
        "better",
        "Accord ahead",
    ]);
    for row in rows {
        let ratio = row
            .ratio()
            .map_or("—".into(), |r| format!("{}×", number(r)));
        let ahead = match row.ahead() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "—",
        };
        table.add_row(vec![
            Cell::new(&row.workload),
            Cell::new(&row.metric),
            Cell::new(row.accord.render(row.unit)).set_alignment(CellAlignment::Right),
            Cell::new(row.reference.render(row.unit)).set_alignment(CellAlignment::Right),
            Cell::new(row.reference_name),
            Cell::new(ratio).set_alignment(CellAlignment::Right),
            Cell::new(match row.better {
                Better::Lower => "lower",
                Better::Higher => "higher",
            }),
            Cell::new(ahead),
        ]);
    }
    table.to_string()
}
