//! Presence and the server's disconnect: what the push API asks the gateways about a room or a user, how their
//! answers add up, and the documents `GET /rooms/{room}`, `GET /users/{user}` and `POST /disconnect/user` answer.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What the push API asks of every gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Who is in this room: its connections and their distinct users.
    Room(Arc<str>),
    /// This user's connections and the `info` claim of each.
    User(Arc<str>),
    /// Close every connection of this user (code 4004) and count them.
    Disconnect(Arc<str>),
}

/// One gateway's answer to a [`Query`], or the sum of several.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// Connections that matched (for [`Query::Disconnect`]: those closed).
    pub connections: u64,
    /// The distinct users among them (for [`Query::Room`]; empty otherwise).
    pub users: HashSet<Arc<str>>,
    /// The `info` claim of each matching connection that has one (for [`Query::User`]; empty otherwise).
    pub info: Vec<Box<RawValue>>,
    /// A gateway that should have answered did not (in time): the figures may be short.
    pub partial: bool,
}

impl Census {
    /// Adds another gateway's answer: counts are summed, users united (a user on two gateways counts once).
    pub fn add(&mut self, other: Census) {
        self.connections += other.connections;
        self.users.extend(other.users);
        self.info.extend(other.info);
        self.partial |= other.partial;
    }
}

/// `GET /rooms/{room}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPresence {
    /// The room asked about.
    pub room: String,
    /// Connections that joined it, over every gateway.
    pub connections: u64,
    /// Distinct authenticated users among them (anonymous connections, with auth off, count in `connections`
    /// only).
    pub users: u64,
    /// A gateway did not answer in time: the figures may be short.
    pub partial: bool,
}

/// `GET /users/{user}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserPresence {
    /// The user asked about.
    pub user: String,
    /// The user's connections, over every gateway.
    pub connections: u64,
    /// The `info` claim of each connection that carried one, in no particular order.
    pub info: Vec<Box<RawValue>>,
    /// A gateway did not answer in time: the figures may be short.
    pub partial: bool,
}

/// `POST /disconnect/user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    /// The user whose connections were closed.
    pub user: String,
    /// Connections closed (with 4004), over every gateway.
    pub closed: u64,
    /// A gateway did not answer in time: it may still hold connections of the user.
    pub partial: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_add_up_and_users_count_once() {
        let user = |name: &str| Arc::<str>::from(name);
        let mut sum = Census {
            connections: 2,
            users: [user("a"), user("b")].into(),
            ..Census::default()
        };
        sum.add(Census {
            connections: 3,
            users: [user("b"), user("c")].into(),
            info: vec![RawValue::from_string("{\"x\":1}".into()).unwrap()],
            partial: true,
        });
        assert_eq!(sum.connections, 5);
        assert_eq!(sum.users.len(), 3);
        assert_eq!(sum.info.len(), 1);
        assert!(sum.partial);
    }
}
