//! What a process holding connections has counted since it started: closes by reason, frames dropped by reason,
//! and room history. They are read from its counters as these typed figures ([`CountsSource`]), so that a gateway
//! can report them to logic (its gRPC status, its NATS announcement) and logic's dashboard can add them up. A family
//! a process does not count is `None`: not known, rather than a zero that looks measured.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One process's counts, or the sum of several.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayCounts {
    /// Connections closed, by reason (the labels of `herald_closes_total`).
    pub closes: Option<BTreeMap<String, u64>>,
    /// Frames not sent to a connection, by reason (`herald_dropped_frames_total`).
    pub dropped_frames: Option<BTreeMap<String, u64>>,
    /// Room history and resuming JOINs.
    pub history: Option<HistoryFigures>,
}

/// Room history and recovery, from the metrics of the process that keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryFigures {
    /// Items stored in room histories (`herald_history_items_total`).
    pub stored_items: u64,
    /// What the retained items cost now, in bytes (`herald_history_bytes`).
    pub bytes: u64,
    /// Items that left histories, by reason (`herald_history_evicted_total`).
    pub evicted: BTreeMap<String, u64>,
    /// JOINs with `since`, by outcome (`herald_recoveries_total`).
    pub recoveries: BTreeMap<String, u64>,
    /// Items replayed to connections that resumed (`herald_replayed_items_total`).
    pub replayed_items: u64,
}

/// Where a process that holds connections reads its counts when asked: its gateway's and hub's counters. Handed to
/// what reports them (a gateway's gRPC status and NATS announcement, the dashboard of `herald serve`).
pub trait CountsSource: Send + Sync + std::fmt::Debug {
    /// What has been counted until now.
    fn counts(&self) -> GatewayCounts;
}

impl GatewayCounts {
    /// Whether nothing is known (a process that holds no connection: logic).
    pub fn is_unknown(&self) -> bool {
        self.closes.is_none() && self.dropped_frames.is_none() && self.history.is_none()
    }

    /// Adds `other` to these counts: a figure known to either is known to the sum.
    pub fn add(&mut self, other: &Self) {
        add_map(&mut self.closes, other.closes.as_ref());
        add_map(&mut self.dropped_frames, other.dropped_frames.as_ref());
        if let Some(theirs) = &other.history {
            let ours = self.history.get_or_insert_with(HistoryFigures::default);
            ours.stored_items += theirs.stored_items;
            ours.bytes += theirs.bytes;
            add_into(&mut ours.evicted, &theirs.evicted);
            add_into(&mut ours.recoveries, &theirs.recoveries);
            ours.replayed_items += theirs.replayed_items;
        }
    }

    /// The sum of several processes' counts; `None` when none of them knows any.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Self>) -> Option<Self> {
        let mut total: Option<Self> = None;
        for counts in all.into_iter().filter(|counts| !counts.is_unknown()) {
            total.get_or_insert_with(Self::default).add(counts);
        }
        total
    }
}

/// Adds each of `theirs`' entries to `ours` (which becomes known if `theirs` is).
fn add_map(ours: &mut Option<BTreeMap<String, u64>>, theirs: Option<&BTreeMap<String, u64>>) {
    if let Some(theirs) = theirs {
        add_into(ours.get_or_insert_with(BTreeMap::new), theirs);
    }
}

fn add_into(ours: &mut BTreeMap<String, u64>, theirs: &BTreeMap<String, u64>) {
    for (key, value) in theirs {
        *ours.entry(key.clone()).or_insert(0) += value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_what_each_knows() {
        let one = GatewayCounts {
            closes: Some(BTreeMap::from([("client".to_owned(), 3), ("heartbeat".to_owned(), 0)])),
            dropped_frames: None,
            history: Some(HistoryFigures {
                stored_items: 7,
                bytes: 512,
                recoveries: BTreeMap::from([("recovered".to_owned(), 2)]),
                ..HistoryFigures::default()
            }),
        };
        let other = GatewayCounts {
            closes: Some(BTreeMap::from([("client".to_owned(), 1), ("shutdown".to_owned(), 4)])),
            dropped_frames: Some(BTreeMap::from([("closing".to_owned(), 2)])),
            history: None,
        };
        let total = GatewayCounts::sum([&one, &other, &GatewayCounts::default()]).unwrap();
        let closes = total.closes.unwrap();
        assert_eq!((closes["client"], closes["heartbeat"], closes["shutdown"]), (4, 0, 4));
        assert_eq!(total.dropped_frames.unwrap()["closing"], 2);
        let history = total.history.unwrap();
        assert_eq!(
            (history.stored_items, history.bytes, history.recoveries["recovered"]),
            (7, 512, 2)
        );
        assert_eq!(GatewayCounts::sum([&GatewayCounts::default()]), None);
    }
}
