//! Which commits a node has heard of, per collection, and reading the rest
//! from PostgreSQL.
//!
//! Numbers of a collection's sequence become visible in order (taking one
//! locks the collection's row until commit), so "every number up to N was
//! handled" is a watermark per collection. A node notes each number it
//! hears of, its own commits' and the bus's; the watermark moves over
//! numbers that are all heard. A number still missing at the next check
//! (the bus lost it, or a node published it late) makes the node read the
//! collection's documents written after its watermark: each it had not
//! heard of is marked stale in the cache and offered to its peers. The
//! same happens for every collection whose sequence passed the watermark
//! when the bus reconnects and at each periodic check.

use std::collections::{BTreeMap, BTreeSet};

use accord_engine::sync::NumberedSummary;
use accord_engine::Collection;

/// How far one collection has been heard of.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Track {
    /// Every number up to here was handled.
    watermark: u64,
    /// Numbers heard of above the watermark.
    heard: BTreeSet<u64>,
    /// A gap was already seen at the previous check.
    gap_seen: bool,
}

impl Track {
    fn advance(&mut self) {
        while self.heard.remove(&(self.watermark + 1)) {
            self.watermark += 1;
        }
    }
}

/// The watermarks of every collection a node knows.
#[derive(Debug, Default)]
pub struct Tracker {
    collections: BTreeMap<Collection, Track>,
}

impl Tracker {
    /// Starts from the store's sequences at start: what was written
    /// before reaches peers through their listings.
    pub fn starting_at(seqs: Vec<(Collection, u64)>) -> Self {
        let collections = seqs
            .into_iter()
            .map(|(c, seq)| {
                let track = Track {
                    watermark: seq,
                    ..Track::default()
                };
                (c, track)
            })
            .collect();
        Tracker { collections }
    }

    /// A commit numbered `seq` in `collection` was handled; returns
    /// whether it was new (not below the watermark nor heard already).
    pub fn heard(&mut self, collection: &Collection, seq: u64) -> bool {
        let track = self.collections.entry(collection.clone()).or_default();
        if seq <= track.watermark || !track.heard.insert(seq) {
            return false;
        }
        track.advance();
        true
    }

    /// Collections with a number missing at this check and the previous
    /// one: those to read from the store.
    pub fn gaps(&mut self) -> Vec<(Collection, u64)> {
        let mut due = Vec::new();
        for (collection, track) in &mut self.collections {
            let gap = !track.heard.is_empty();
            if gap && track.gap_seen {
                due.push((collection.clone(), track.watermark));
            }
            track.gap_seen = gap;
        }
        due
    }

    /// Of the store's sequences now, the collections this node is behind
    /// on, with their watermarks; collections it only heard all of move
    /// their watermark on.
    pub fn behind(&mut self, seqs: &[(Collection, u64)]) -> Vec<(Collection, u64)> {
        let mut due = Vec::new();
        for (collection, seq) in seqs {
            let track = self.collections.entry(collection.clone()).or_default();
            if *seq > track.watermark {
                due.push((collection.clone(), track.watermark));
            }
        }
        due
    }

    /// How many numbers, over every collection, this node is behind the
    /// sequences in `seqs` by.
    pub fn lag(&self, seqs: &[(Collection, u64)]) -> u64 {
        seqs.iter()
            .map(|(c, seq)| {
                let track = self.collections.get(c);
                let watermark = track.map_or(0, |t| t.watermark);
                let heard = track.map_or(0, |t| t.heard.range(..=*seq).count() as u64);
                seq.saturating_sub(watermark).saturating_sub(heard)
            })
            .sum()
    }

    /// The rows read after the watermark of `collection` (one page, in
    /// number order), returns those not heard of yet; `complete`: the page
    /// reached the end, so the watermark moves to `upto` (the sequence
    /// read before the rows) or the last row's number, whichever is
    /// higher. Otherwise it moves to the last row's number.
    pub fn read(
        &mut self,
        collection: &Collection,
        rows: Vec<NumberedSummary>,
        complete: bool,
        upto: u64,
    ) -> Vec<NumberedSummary> {
        let track = self.collections.entry(collection.clone()).or_default();
        let last = rows.last().map_or(track.watermark, |r| r.seq);
        let unheard: Vec<NumberedSummary> = rows
            .into_iter()
            .filter(|r| r.seq > track.watermark && !track.heard.contains(&r.seq))
            .collect();
        let to = if complete { last.max(upto) } else { last };
        if to > track.watermark {
            track.watermark = to;
            track.heard.retain(|n| *n > to);
        }
        track.advance();
        track.gap_seen = false;
        unheard
    }

    /// The watermark of `collection` now.
    pub fn watermark(&self, collection: &Collection) -> u64 {
        self.collections.get(collection).map_or(0, |t| t.watermark)
    }
}

#[cfg(test)]
mod tests {
    use accord_engine::sync::DocSummary;
    use accord_engine::{DocId, Heads};

    use super::*;

    fn notes() -> Collection {
        "notes".parse().expect("valid")
    }

    fn row(seq: u64) -> NumberedSummary {
        NumberedSummary {
            seq,
            summary: DocSummary {
                doc: DocId::random(),
                heads: Heads::empty(),
                deleted: false,
            },
        }
    }

    #[test]
    fn the_watermark_moves_over_numbers_heard_in_any_order() {
        let mut t = Tracker::starting_at(vec![(notes(), 4)]);
        assert!(!t.heard(&notes(), 3), "below the start");
        assert!(t.heard(&notes(), 6));
        assert_eq!(t.watermark(&notes()), 4);
        assert!(t.heard(&notes(), 5));
        assert_eq!(t.watermark(&notes()), 6);
        assert!(!t.heard(&notes(), 6), "heard twice");
        assert!(t.gaps().is_empty());
    }

    #[test]
    fn a_number_missing_at_two_checks_is_read_from_the_store() {
        let mut t = Tracker::default();
        t.heard(&notes(), 1);
        t.heard(&notes(), 3);
        assert!(t.gaps().is_empty(), "the first check gives it a grace");
        assert_eq!(t.gaps(), vec![(notes(), 1)]);
        // The store holds 2 (lost on the bus) and 3 (heard) and 4 (late).
        let unheard = t.read(&notes(), vec![row(2), row(3), row(4)], true, 4);
        assert_eq!(unheard.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(t.watermark(&notes()), 4);
        assert!(!t.heard(&notes(), 4), "already handled by the read");
        assert!(t.gaps().is_empty());
    }

    #[test]
    fn a_partial_page_moves_the_watermark_only_to_its_last_row() {
        let mut t = Tracker::default();
        let unheard = t.read(&notes(), vec![row(2), row(5)], false, 9);
        assert_eq!(unheard.len(), 2);
        assert_eq!(t.watermark(&notes()), 5);
        assert_eq!(t.behind(&[(notes(), 9)]), vec![(notes(), 5)]);
        assert_eq!(t.lag(&[(notes(), 9)]), 4);
    }
}
