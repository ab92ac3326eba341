//! Presence and the server's disconnect, answered from the member lists (taken under the shard lock, walked after
//! it).

use herald_protocol::bus::{Census, Query, Target};
use serde_json::value::RawValue;

use crate::hub::Hub;
use crate::recipient::Recipient;

impl<R: Recipient> Hub<R> {
    /// Answers a presence query, or closes a user's connections.
    pub fn census(&self, query: &Query) -> Census {
        let (topic, name) = match query {
            Query::Room(room) => (Target::Room(std::sync::Arc::clone(room)), room),
            Query::User(user) | Query::Disconnect(user) => (Target::User(std::sync::Arc::clone(user)), user),
        };
        let members = {
            let mut state = self.room_shard(name).state.lock();
            let (entries, name) = state.entries(&topic);
            match entries.get(&**name) {
                Some(entry) => entry.members.snapshot(),
                None => return Census::default(),
            }
        };
        let mut census = Census {
            connections: members.len() as u64,
            ..Census::default()
        };
        match query {
            Query::Room(_) => census.users = members.iter().filter_map(|m| m.user().cloned()).collect(),
            Query::User(_) => {
                census.info = members
                    .iter()
                    .filter_map(|m| m.info().map(RawValue::to_owned))
                    .collect()
            }
            Query::Disconnect(_) => members.iter().for_each(|member| member.disconnect()),
        }
        census
    }
}
