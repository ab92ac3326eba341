//! What a process holding connections has counted since it started: closes by reason, frames dropped by reason,
//! and room history. They live in its Prometheus registry; here they are read from the registry's text (as
//! `/metrics` renders it), so that a gateway can report them to logic (its gRPC status, its NATS announcement) and
//! logic's dashboard can add them up. A family the process does not register (no history kept) is `None`: not
//! known, rather than a zero that looks measured.

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

impl GatewayCounts {
    /// The counts in a registry's text exposition (Prometheus / OpenMetrics, as herald's `/metrics`).
    pub fn from_metrics_text(text: &str) -> Self {
        let samples = Samples::parse(text);
        Self {
            closes: samples.by_label("herald_closes_total", "reason"),
            dropped_frames: samples.by_label("herald_dropped_frames_total", "reason"),
            history: samples.history(),
        }
    }

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

/// The samples of a text exposition: `(name, labels, value)`.
struct Samples<'a>(Vec<(&'a str, &'a str, f64)>);

impl<'a> Samples<'a> {
    fn parse(text: &'a str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.strip_suffix('}')?),
                    None => (series, ""),
                };
                Some((name, labels, value))
            })
            .collect();
        Self(samples)
    }

    /// The samples of `name` by the value of its `label`, or `None` when the text has no such family.
    fn by_label(&self, name: &str, label: &str) -> Option<BTreeMap<String, u64>> {
        let mut found = None;
        for (sample, labels, value) in &self.0 {
            if *sample != name {
                continue;
            }
            let map = found.get_or_insert_with(BTreeMap::new);
            if let Some(key) = label_value(labels, label) {
                *map.entry(key.to_owned()).or_insert(0) += as_count(*value);
            }
        }
        found
    }

    /// The one sample of `name` (no labels), if there is one.
    fn value(&self, name: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|(sample, labels, _)| *sample == name && labels.is_empty())
            .map(|(_, _, value)| as_count(*value))
    }

    /// The history and recovery figures, when the process keeps room histories' metrics.
    fn history(&self) -> Option<HistoryFigures> {
        Some(HistoryFigures {
            stored_items: self.value("herald_history_items_total")?,
            bytes: self.value("herald_history_bytes").unwrap_or(0),
            evicted: self
                .by_label("herald_history_evicted_total", "reason")
                .unwrap_or_default(),
            recoveries: self.by_label("herald_recoveries_total", "outcome").unwrap_or_default(),
            replayed_items: self.value("herald_replayed_items_total").unwrap_or(0),
        })
    }
}

/// The value of `label` in a sample's label text (`reason="client",other="x"`); herald's label values hold no
/// quote.
fn label_value<'a>(labels: &'a str, label: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == label).then(|| value.trim_matches('"'))
    })
}

/// A counter or gauge sample as a whole count (they are whole; a negative gauge reads as 0).
fn as_count(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP herald_closes Connections closed, by reason.\n\
        # TYPE herald_closes counter\n\
        herald_closes_total{reason=\"client\"} 3\n\
        herald_closes_total{reason=\"heartbeat\"} 0\n\
        herald_history_items_total 7\n\
        herald_history_bytes 512\n\
        herald_recoveries_total{outcome=\"recovered\"} 2\n\
        # EOF\n";

    #[test]
    fn a_family_in_the_text_is_read_and_a_missing_one_is_unknown() {
        let counts = GatewayCounts::from_metrics_text(TEXT);
        assert_eq!(
            counts.closes,
            Some(BTreeMap::from([("client".to_owned(), 3), ("heartbeat".to_owned(), 0)]))
        );
        assert_eq!(counts.dropped_frames, None);
        let history = counts.history.as_ref().expect("history is there");
        assert_eq!((history.stored_items, history.bytes), (7, 512));
        assert_eq!(history.recoveries["recovered"], 2);
        assert!(GatewayCounts::from_metrics_text("# EOF\n").is_unknown());
    }

    #[test]
    fn sums_add_what_each_knows() {
        let one = GatewayCounts::from_metrics_text(TEXT);
        let other = GatewayCounts {
            closes: Some(BTreeMap::from([("client".to_owned(), 1), ("shutdown".to_owned(), 4)])),
            dropped_frames: Some(BTreeMap::from([("closing".to_owned(), 2)])),
            history: None,
        };
        let total = GatewayCounts::sum([&one, &other, &GatewayCounts::default()]).unwrap();
        let closes = total.closes.unwrap();
        assert_eq!((closes["client"], closes["heartbeat"], closes["shutdown"]), (4, 0, 4));
        assert_eq!(total.dropped_frames.unwrap()["closing"], 2);
        assert_eq!(total.history.unwrap().stored_items, 7);
        assert_eq!(GatewayCounts::sum([&GatewayCounts::default()]), None);
    }
}
