//! A connection as the hub sees it.

use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::forms::WireForm;
use serde_json::value::RawValue;

/// A connection as the hub sees it.
pub trait Recipient: Send + Sync + 'static {
    /// A process-unique id.
    fn id(&self) -> u64;

    /// The form its frames take on the wire, stated when it was accepted; the same for as long as it is
    /// registered.
    fn form(&self) -> WireForm;

    /// Hands one complete frame, in the connection's [`Recipient::form`], to the connection. Must never block: a
    /// connection that cannot take it deals with that itself (the gateway closes it as a slow consumer).
    fn deliver(&self, frame: &Bytes);

    /// The connection's user (its token's `sub`), when it has one. The hub makes it a member of that user's
    /// entry for as long as it is registered.
    fn user(&self) -> Option<&Arc<str>>;

    /// The `info` claim of its token, as JSON text, for presence.
    fn info(&self) -> Option<&RawValue>;

    /// Closes the connection because the push API asked (`POST /disconnect/user`). Must never block.
    fn disconnect(&self);
}
