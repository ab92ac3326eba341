//! What became of history items and of resuming JOINs: the outcomes [`crate::history`] and [`crate::stored`]
//! decide and [`crate::metrics`] counts, in a module of their own so neither imports the other for them.

/// Why an item left a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evicted {
    Size,
    Age,
    Memory,
}

impl Evicted {
    /// Every reason, each counted under its label.
    pub(crate) const ALL: [Evicted; 3] = [Self::Size, Self::Age, Self::Memory];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::Age => "age",
            Self::Memory => "memory",
        }
    }
}

/// What a resuming JOIN finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Every item after `since` is retained.
    Recovered,
    /// `since` is of another epoch.
    OtherEpoch,
    /// Items after `since` have left the history already.
    Gone,
    /// `since` is beyond where the room stands (the client's position cannot be of this epoch).
    Ahead,
    /// The store of a history kept elsewhere did not answer.
    Unavailable,
}

impl Recovery {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Recovered => "recovered",
            Self::OtherEpoch => "other_epoch",
            Self::Gone => "gone",
            Self::Ahead => "ahead",
            Self::Unavailable => "unavailable",
        }
    }
}
