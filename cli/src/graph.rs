//! The change DAG of a record: ordered newest first, and drawn the way
//! `git log --graph` draws commits.
//!
//! [`newest_first`] orders changes so that each comes before the changes it
//! depends on, and among the changes free to come next picks the newest.
//! [`Graph`] then lays them out in columns: each column waits for one
//! change; a change with two deps opens a second column (a merge, `|\`),
//! and two columns waiting for the same change join (a fork, `|/`). This
//! module knows nothing of records or output; it works on hashes alone.

use std::collections::{BinaryHeap, HashMap};

use accord_engine::automerge::ChangeHash;

/// What the graph needs to know about one change.
#[derive(Debug, Clone)]
pub struct Node {
    /// The change.
    pub hash: ChangeHash,
    /// The changes it builds on.
    pub deps: Vec<ChangeHash>,
    /// When it was made (seconds; only used to order concurrent changes).
    pub time: i64,
}

/// Indices into `nodes` (given in causal order), newest first: every change
/// before its deps; among changes whose dependents are all placed, the one
/// with the latest time, then the greatest hash. Ties never fall back to
/// the order changes arrived in, so every device draws the same graph.
pub fn newest_first(nodes: &[Node]) -> Vec<usize> {
    let index: HashMap<ChangeHash, usize> =
        nodes.iter().enumerate().map(|(i, n)| (n.hash, i)).collect();
    let mut dependents = vec![0usize; nodes.len()];
    for node in nodes {
        for dep in &node.deps {
            if let Some(&d) = index.get(dep) {
                dependents[d] += 1;
            }
        }
    }
    let key = |i: usize| (nodes[i].time, nodes[i].hash, i);
    let mut ready: BinaryHeap<(i64, ChangeHash, usize)> = (0..nodes.len())
        .filter(|&i| dependents[i] == 0)
        .map(key)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some((_, _, i)) = ready.pop() {
        order.push(i);
        for dep in &nodes[i].deps {
            if let Some(&d) = index.get(dep) {
                dependents[d] -= 1;
                if dependents[d] == 0 {
                    ready.push(key(d));
                }
            }
        }
    }
    order
}

/// The lines drawn for one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    /// The change's own row, such as `| * `.
    pub node: String,
    /// The rows joining it to what comes next, such as `|/`.
    pub connectors: Vec<String>,
}

/// The state of the drawing: which change each column waits for.
#[derive(Debug, Default)]
pub struct Graph {
    /// Column `i` waits for `columns[i]`; never two columns for one change.
    columns: Vec<ChangeHash>,
}

impl Graph {
    /// An empty drawing.
    pub fn new() -> Self {
        Graph::default()
    }

    /// Places the next change (in [`newest_first`] order) and returns its
    /// rows. `deps` should be ordered by when they will be placed, soonest
    /// first: the first one continues this change's column.
    pub fn place(&mut self, hash: ChangeHash, deps: &[ChangeHash]) -> Rows {
        let at = match self.columns.iter().position(|h| *h == hash) {
            Some(at) => at,
            None => {
                self.columns.push(hash);
                self.columns.len() - 1
            }
        };
        let node = node_row(self.columns.len(), at);
        let (next, edges) = self.advance(at, deps);
        let connectors = connector_rows(edges);
        self.columns = next;
        Rows { node, connectors }
    }

    /// The columns after the change in column `at` hands over to its deps,
    /// and the edges (old column, new column) that take each line there.
    fn advance(&self, at: usize, deps: &[ChangeHash]) -> (Vec<ChangeHash>, Vec<(usize, usize)>) {
        let mut next: Vec<ChangeHash> = Vec::new();
        let mut edges = Vec::new();
        let mut slot = |hash: ChangeHash, from: usize, edges: &mut Vec<(usize, usize)>| {
            let to = next.iter().position(|h| *h == hash).unwrap_or_else(|| {
                next.push(hash);
                next.len() - 1
            });
            edges.push((from, to));
        };
        for (col, hash) in self.columns.iter().enumerate() {
            if col == at {
                deps.iter().for_each(|d| slot(*d, col, &mut edges));
            } else {
                slot(*hash, col, &mut edges);
            }
        }
        (next, edges)
    }
}

/// `| * |`: a star in column `at` of `width` columns.
fn node_row(width: usize, at: usize) -> String {
    (0..width)
        .map(|col| if col == at { "*" } else { "|" })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The rows that move each line from its old column to its new one, one
/// column per row, `/` leftwards and `\` rightwards. None if every line
/// goes straight down.
fn connector_rows(edges: Vec<(usize, usize)>) -> Vec<String> {
    let mut pos: Vec<(usize, usize)> = edges;
    let mut rows = Vec::new();
    while pos.iter().any(|(at, to)| at != to) {
        let width = pos
            .iter()
            .map(|(at, to)| at.max(to) * 2 + 2)
            .max()
            .unwrap_or(0);
        let mut row = vec![' '; width];
        for (at, to) in pos.iter_mut() {
            let (mark, x) = if *at == *to {
                ('|', *at * 2)
            } else if *to < *at {
                *at -= 1;
                ('/', *at * 2 + 1)
            } else {
                *at += 1;
                ('\\', *at * 2 - 1)
            };
            row[x] = if row[x] != ' ' && row[x] != mark {
                'X'
            } else {
                mark
            };
        }
        rows.push(row.into_iter().collect::<String>().trim_end().to_owned());
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> ChangeHash {
        ChangeHash([n; 32])
    }

    fn node(n: u8, deps: &[u8], time: i64) -> Node {
        Node {
            hash: h(n),
            deps: deps.iter().map(|d| h(*d)).collect(),
            time,
        }
    }

    /// Draws nodes given in causal order, newest first, as text lines.
    fn draw(nodes: &[Node]) -> Vec<String> {
        let mut graph = Graph::new();
        let mut lines = Vec::new();
        for i in newest_first(nodes) {
            let rows = graph.place(nodes[i].hash, &nodes[i].deps);
            lines.push(format!("{} {}", rows.node, nodes[i].hash.0[0]));
            lines.extend(rows.connectors);
        }
        lines
    }

    #[test]
    fn a_line_is_a_column_of_stars() {
        let nodes = [node(1, &[], 1), node(2, &[1], 2), node(3, &[2], 3)];
        assert_eq!(draw(&nodes), ["* 3", "* 2", "* 1"]);
    }

    #[test]
    fn a_branch_and_merge_draws_like_git() {
        // 1 <- 2 <- 3 (one replica), 1 <- 4 <- 5 (another), 6 merges 3 and 5.
        let nodes = [
            node(1, &[], 1),
            node(2, &[1], 2),
            node(3, &[2], 3),
            node(4, &[1], 4),
            node(5, &[4], 5),
            node(6, &[5, 3], 6),
        ];
        let expected = [
            "* 6", "|\\", "* | 5", "* | 4", "| * 3", "| * 2", "|/", "* 1",
        ];
        assert_eq!(draw(&nodes), expected);
    }

    #[test]
    fn unmerged_heads_get_their_own_columns() {
        let nodes = [node(1, &[], 1), node(2, &[1], 2), node(3, &[1], 3)];
        assert_eq!(draw(&nodes), ["* 3", "| * 2", "|/", "* 1"]);
    }

    #[test]
    fn order_puts_every_change_before_its_deps() {
        // Times disagree with causality: a dep newer than its dependent.
        let nodes = [node(1, &[], 9), node(2, &[1], 1), node(3, &[1], 5)];
        let order = newest_first(&nodes);
        assert_eq!(order, [2, 1, 0]);
    }

    #[test]
    fn same_second_changes_order_the_same_whatever_their_arrival() {
        // Two devices hold the same changes in different causal orders
        // (each received the other's concurrent change second).
        let here = [node(1, &[], 7), node(2, &[1], 7), node(3, &[1], 7)];
        let there = [node(1, &[], 7), node(3, &[1], 7), node(2, &[1], 7)];
        let hashes = |nodes: &[Node]| -> Vec<u8> {
            newest_first(nodes)
                .into_iter()
                .map(|i| nodes[i].hash.0[0])
                .collect()
        };
        assert_eq!(hashes(&here), [3, 2, 1]);
        assert_eq!(hashes(&there), hashes(&here));
        assert_eq!(draw(&there), draw(&here));
    }

    #[test]
    fn several_roots_and_wide_moves() {
        // Two unrelated roots merged: lines end without a `|/`.
        let nodes = [node(1, &[], 1), node(2, &[], 2), node(3, &[2, 1], 3)];
        assert_eq!(draw(&nodes), ["* 3", "|\\", "* | 2", " /", "* 1"]);
    }
}
