//! One gateway's answer to one push, as logic sums it up, and the `result` label it is counted under.

use crate::hop::Reason;
use crate::pb::{self, ack};

/// One gateway's answer to one push, as logic sums it up.
pub(super) enum Outcome {
    Accepted {
        recipients: u64,
    },
    Refused {
        reason: &'static str,
        retry_after: u32,
        /// The gateway's item limit, when it refused the push as too large.
        limit: Option<u64>,
        /// What the gateway said was unavailable, when it said so.
        detail: Option<String>,
    },
    Unconfirmed(&'static str),
}

impl Outcome {
    pub(super) fn unreachable() -> Self {
        Self::Refused {
            reason: "unreachable",
            retry_after: 1,
            limit: None,
            detail: None,
        }
    }

    pub(super) fn from_ack(ack: &pb::Ack) -> Self {
        match &ack.result {
            Some(ack::Result::Accepted(accepted)) => Self::Accepted {
                recipients: accepted.recipients,
            },
            Some(ack::Result::Refused(refusal)) => {
                let reason = Reason::from_wire(refusal.reason());
                Self::Refused {
                    reason: reason.forward_result(),
                    retry_after: refusal.retry_after_secs.max(1),
                    limit: (reason == Reason::TooManyItems).then_some(refusal.limit),
                    detail: (!refusal.detail.is_empty()).then(|| refusal.detail.clone()),
                }
            }
            None => Self::Refused {
                reason: "gateway_refused",
                retry_after: 1,
                limit: None,
                detail: None,
            },
        }
    }

    pub(super) fn result_label(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::Refused { reason, .. } => reason,
            Self::Unconfirmed(_) => "unconfirmed",
        }
    }
}
