//! What both hops (gRPC and NATS) share: a push as it travels (`pb::Push`), how a gateway takes one into its hub and
//! why it may refuse it (one set of reasons, one label each), and how long to wait before reconnecting.

use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use herald_hub::{Hub, Recipient};
use herald_protocol::bus::{Accepted, Census, Query, Refused, Target};
use herald_protocol::client::valid_room;
use herald_protocol::valid_user;
use serde_json::value::RawValue;

use crate::pb::{self, ack, push, query_request, refused};

/// First wait before reconnecting (to a gateway, to NATS); doubles per failed attempt.
pub(crate) const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnect attempts.
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The wait before reconnect attempt `failures` (1-based): doubling from [`RECONNECT_MIN`] up to [`RECONNECT_MAX`],
/// jittered to between half and all of it so that nodes restarted together do not reconnect in step.
pub(crate) fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let full = RECONNECT_MIN.saturating_mul(1 << exponent).min(RECONNECT_MAX);
    full.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// A push as it crosses either hop: its target and the items as logic validated them, never parsed on the way.
pub(crate) fn wire_push(target: Target, items: Vec<Bytes>) -> pb::Push {
    pb::Push {
        target: Some(match target {
            Target::Room(room) => push::Target::Room(room.to_string()),
            Target::User(user) => push::Target::User(user.to_string()),
            Target::All => push::Target::All(pb::Everyone {}),
        }),
        items,
    }
}

/// Why a gateway did not take a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Its hub's queue is full.
    QueueFull,
    /// It is shutting down.
    ShuttingDown,
    /// More items than its hub's queue can ever hold.
    TooManyItems,
    /// No target, or an invalid room: not a push logic sent.
    Invalid,
    /// What it needs to take the push is not there (its room history is kept in a store the push did not come
    /// through); the refusal's detail says what.
    Unavailable,
}

impl Reason {
    /// The reason a gateway's ack gave (an unknown one reads as invalid).
    pub(crate) fn from_wire(reason: refused::Reason) -> Self {
        match reason {
            refused::Reason::QueueFull => Self::QueueFull,
            refused::Reason::ShuttingDown => Self::ShuttingDown,
            refused::Reason::TooManyItems => Self::TooManyItems,
            refused::Reason::Unavailable => Self::Unavailable,
            refused::Reason::Invalid | refused::Reason::Unspecified => Self::Invalid,
        }
    }

    fn to_wire(self) -> refused::Reason {
        match self {
            Self::QueueFull => refused::Reason::QueueFull,
            Self::ShuttingDown => refused::Reason::ShuttingDown,
            Self::TooManyItems => refused::Reason::TooManyItems,
            Self::Invalid => refused::Reason::Invalid,
            Self::Unavailable => refused::Reason::Unavailable,
        }
    }

    /// The reason as the gateway counts it (`herald_nats_pushes_refused_total{reason}`).
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::ShuttingDown => "shutting_down",
            Self::TooManyItems => "too_many_items",
            Self::Invalid => "invalid",
            Self::Unavailable => "unavailable",
        }
    }

    /// The same reason as logic counts a forward (`herald_cluster_forwards_total{result}`), where it is told apart
    /// from logic's own refusals (`queue_full` there is logic's queue for that gateway).
    pub(crate) fn forward_result(self) -> &'static str {
        match self {
            Self::QueueFull => "gateway_queue_full",
            Self::ShuttingDown => "gateway_shutting_down",
            Self::TooManyItems => "gateway_too_many_items",
            Self::Invalid => "gateway_refused",
            Self::Unavailable => "gateway_unavailable",
        }
    }
}

/// A push a gateway did not take, and what the sender should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Why.
    pub(crate) reason: Reason,
    /// When to try again.
    pub(crate) retry_after_secs: u32,
    /// With [`Reason::TooManyItems`]: the most items a push may carry.
    pub(crate) limit: u64,
    /// With [`Reason::Unavailable`]: what is not there, as the hub said it.
    pub(crate) detail: String,
}

impl Refusal {
    fn new(reason: Reason, retry_after_secs: u32, limit: u64) -> Self {
        Self {
            reason,
            retry_after_secs,
            limit,
            detail: String::new(),
        }
    }
}

/// Hands one received push to the hub and says what happened.
pub(crate) fn take<R: Recipient>(hub: &Hub<R>, push: pb::Push) -> Result<Accepted, Refusal> {
    let target = match push.target {
        Some(push::Target::Room(room)) if valid_room(&room) => Target::Room(room.into()),
        Some(push::Target::User(user)) if valid_user(&user) => Target::User(user.into()),
        Some(push::Target::All(_)) => Target::All,
        // Logic validated the push; anything else is a foreign or broken client. Refuse it, never guess.
        _ => return Err(Refusal::new(Reason::Invalid, 0, 0)),
    };
    hub.push(&target, push.items).map_err(refusal)
}

/// A push the hub refused, as a gateway says so: the same reason, and what the sender needs to answer as the hub
/// would have (when to retry, the item limit, what is unavailable).
pub(crate) fn refusal(refused: Refused) -> Refusal {
    match refused {
        Refused::QueueFull { retry_after_secs } => Refusal::new(Reason::QueueFull, retry_after_secs, 0),
        Refused::TooManyItems { limit } => Refusal::new(Reason::TooManyItems, 0, limit as u64),
        Refused::ShuttingDown => Refusal::new(Reason::ShuttingDown, 5, 0),
        Refused::Unavailable {
            retry_after_secs,
            detail,
        } => Refusal {
            detail,
            ..Refusal::new(Reason::Unavailable, retry_after_secs, 0)
        },
    }
}

/// A query as it crosses either hop.
pub(crate) fn wire_query(query: &Query) -> pb::QueryRequest {
    let what = match query {
        Query::Room(room) => query_request::What::Room(room.to_string()),
        Query::User(user) => query_request::What::User(user.to_string()),
        Query::Disconnect(user) => query_request::What::DisconnectUser(user.to_string()),
    };
    pb::QueryRequest { what: Some(what) }
}

/// A gateway answers a query from its hub; `None` for a query that names nothing valid.
pub(crate) fn answer<R: Recipient>(hub: &Hub<R>, request: pb::QueryRequest) -> Option<pb::QueryReply> {
    let query = match request.what? {
        query_request::What::Room(room) if valid_room(&room) => Query::Room(room.into()),
        query_request::What::User(user) if valid_user(&user) => Query::User(user.into()),
        query_request::What::DisconnectUser(user) if valid_user(&user) => Query::Disconnect(user.into()),
        _ => return None,
    };
    let census = hub.census(&query);
    Some(pb::QueryReply {
        connections: census.connections,
        users: census.users.iter().map(|user| user.to_string()).collect(),
        info: census.info.iter().map(|info| info.get().to_owned()).collect(),
        gateway: String::new(),
    })
}

/// Logic reads a gateway's answer (an `info` that is not JSON, which no gateway of herald's sends, is left out).
pub(crate) fn census_of(reply: pb::QueryReply) -> Census {
    Census {
        connections: reply.connections,
        users: reply.users.into_iter().map(Arc::from).collect(),
        info: reply
            .info
            .into_iter()
            .filter_map(|info| RawValue::from_string(info).ok())
            .collect(),
        partial: false,
    }
}

/// The gateway's ack for what [`take`] said.
pub(crate) fn ack(taken: Result<Accepted, Refusal>) -> pb::Ack {
    let result = match taken {
        Ok(accepted) => ack::Result::Accepted(pb::Accepted {
            items: accepted.items as u64,
            recipients: accepted.recipients.unwrap_or(0) as u64,
        }),
        Err(refusal) => ack::Result::Refused(pb::Refused {
            reason: refusal.reason.to_wire() as i32,
            retry_after_secs: refusal.retry_after_secs,
            limit: refusal.limit,
            detail: refusal.detail,
        }),
    };
    pb::Ack { result: Some(result) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        for failures in 1..40 {
            let full = RECONNECT_MIN
                .saturating_mul(1 << (failures - 1).min(16))
                .min(RECONNECT_MAX);
            let wait = backoff(failures);
            assert!(wait >= full / 2 && wait <= full, "{failures}: {wait:?} vs {full:?}");
        }
        assert!(backoff(100) <= RECONNECT_MAX);
    }

    #[test]
    fn every_reason_crosses_the_wire_as_itself() {
        for reason in [
            Reason::QueueFull,
            Reason::ShuttingDown,
            Reason::TooManyItems,
            Reason::Invalid,
            Reason::Unavailable,
        ] {
            assert_eq!(Reason::from_wire(reason.to_wire()), reason);
            assert!(reason.forward_result().starts_with("gateway_"));
        }
    }

    #[test]
    fn a_refusal_keeps_its_reason_and_detail_across_the_hop() {
        let refused = Refused::Unavailable {
            retry_after_secs: 1,
            detail: "the store is down".to_owned(),
        };
        let ack = ack(Err(refusal(refused)));
        let Some(ack::Result::Refused(wire)) = ack.result else {
            panic!("a refusal: {ack:?}")
        };
        assert_eq!(Reason::from_wire(wire.reason()), Reason::Unavailable);
        assert_eq!((wire.retry_after_secs, wire.detail.as_str()), (1, "the store is down"));
        assert_eq!(refusal(Refused::ShuttingDown).reason, Reason::ShuttingDown);
    }
}
