//! The commands a client sends (PING, JOIN, LEAVE, REFRESH, with an optional id to acknowledge) and the answer each
//! gets; bad input closes the connection with the fitting code.
//!
//! With auth on, a JOIN is carried out when the connection's token allows the room (`rooms`), when
//! `public_rooms` does, or when the JOIN carries a room token for this user and room; a REFRESH replaces the
//! token's expiry and rooms with a newer token's of the same user.

use std::sync::Arc;

use herald_hub::Recipient;
use herald_protocol::client::{self, Command, MessageError, RequestError, Since};
use herald_protocol::position::{self, JoinAnswer};
use herald_protocol::token::TokenError;
use herald_protocol::ws::{self, FrameError, Message, OpCode, close};
use serde_json::value::RawValue;

use super::auth::Auth;
use super::writer::Session;
use crate::metrics::{BadInput, CloseReason};

/// What reading asks the connection to do next.
pub(super) enum Flow {
    Continue,
    /// Close with this code and reason.
    Close {
        code: u16,
        reason: String,
        why: CloseReason,
    },
    /// The peer sent a close frame.
    PeerClosed(Option<u16>),
}

/// What handling one message needs (kept apart from the assembler that lends the message).
pub(super) struct Commands<'a> {
    pub(super) session: &'a Arc<Session>,
    pub(super) rooms: &'a mut Vec<Arc<str>>,
    pub(super) auth: &'a mut Option<Auth>,
}

impl Commands<'_> {
    /// Handles one message. While our close is under way (`closing`), data messages are ignored: only the peer's
    /// close matters.
    pub(super) fn on_message(&mut self, message: Message<'_>, closing: bool) -> Flow {
        match message {
            Message::Close(code) => Flow::PeerClosed(code),
            _ if closing => Flow::Continue,
            // The conformance echo server (Gateway::new_echo, built only with the `conformance` feature): every
            // message goes back as it came.
            #[cfg(feature = "conformance")]
            Message::Text(text) if self.session.context.echo => self.echo(OpCode::Text, text.as_bytes()),
            #[cfg(feature = "conformance")]
            Message::Binary(data) if self.session.context.echo => self.echo(OpCode::Binary, data),
            Message::Text(text) => self.on_text(text),
            Message::Binary(_) => self.bad(
                BadInput::Binary,
                close::UNSUPPORTED_DATA,
                "binary messages not supported",
            ),
            Message::Ping(payload) => {
                self.session.deliver(&ws::frame(OpCode::Pong, payload));
                Flow::Continue
            }
            Message::Pong => Flow::Continue,
        }
    }

    /// The echo server's answer: the message back, compressed when the connection takes compressed frames (as
    /// herald's own frames to it would be).
    #[cfg(feature = "conformance")]
    fn echo(&self, opcode: OpCode, data: &[u8]) -> Flow {
        let frame = if self.session.form() == herald_protocol::forms::WireForm::Deflate {
            ws::compressed_frame(opcode, &herald_protocol::deflate::deflate(data, 1))
        } else {
            ws::frame(opcode, data)
        };
        self.session.deliver(&frame);
        Flow::Continue
    }

    fn on_text(&mut self, text: &str) -> Flow {
        let message = match client::parse(text) {
            Ok(message) => message,
            Err(e) => {
                let kind = match e {
                    MessageError::NotJson => BadInput::NotJson,
                    MessageError::Unknown(_) => BadInput::UnknownMessage,
                    MessageError::IdTooLong => BadInput::IdTooLong,
                };
                return self.bad(kind, e.close_code(), &e.to_string());
            }
        };
        let result = match &message.command {
            Command::Ping => {
                self.session.deliver(&client::pong(message.id));
                return Flow::Continue;
            }
            Command::Join { room, token, since } => match self.join(room, token.as_deref(), since.as_ref(), message.id)
            {
                // Answered by the hub, before any frame of the room.
                Ok(()) => return Flow::Continue,
                Err(error) => Err(error),
            },
            Command::Leave(room) => self.leave(room),
            Command::Refresh(token) => self.refresh(token),
        };
        self.reply(message.id, result);
        Flow::Continue
    }

    /// A JOIN; when it is taken, the hub delivers its ACK (with the room's position when the room keeps history)
    /// and what a resuming JOIN missed, before any frame of the room.
    fn join(
        &mut self,
        room: &str,
        token: Option<&str>,
        since: Option<&Since<'_>>,
        id: Option<&RawValue>,
    ) -> Result<(), RequestError> {
        let context = &self.session.context;
        if !client::valid_room(room) {
            return Err(RequestError::InvalidRoom);
        }
        // Already a member: acknowledged again (with where the room stands), nothing replayed.
        let member = self.rooms.iter().any(|r| **r == *room);
        if !member {
            self.authorize(room, token)?;
            if self.rooms.len() >= context.limits.max_rooms_per_connection {
                return Err(RequestError::TooManyRooms);
            }
        }
        // Owned: with history kept elsewhere the ACK goes when the store has answered, after this message is gone.
        let id = id.map(ToOwned::to_owned);
        let ack = move |answer: Option<&JoinAnswer>| {
            let id = id?;
            Some(match answer {
                Some(answer) => position::join_ack(&id, answer),
                None => client::ack(&id),
            })
        };
        let joined = context
            .hub
            .join_with(room, self.session, since, ack)
            .map_err(|_| RequestError::TooManyRoomsTotal)?;
        if joined.new {
            // The hub's own copy of the name: a room's members share one.
            self.rooms.push(joined.room);
        }
        Ok(())
    }

    /// Whether this connection may join `room` (always, with auth off).
    fn authorize(&self, room: &str, token: Option<&str>) -> Result<(), RequestError> {
        let (Some(auth), Some(verifier), Some(user)) = (
            self.auth.as_ref(),
            self.session.context.access.config.verifier.as_ref(),
            self.session.user.as_deref(),
        ) else {
            return Ok(());
        };
        if self.session.context.access.may_join(auth.rooms(), room) {
            return Ok(());
        }
        let Some(token) = token else {
            return Err(RequestError::Forbidden);
        };
        verifier
            .room(token, user, room)
            .map(drop)
            .map_err(|error| self.token_refused(error))
    }

    /// REFRESH: a newer token of the same user moves the expiry and replaces the rooms it allows.
    fn refresh(&mut self, token: &str) -> Result<(), RequestError> {
        let (Some(verifier), Some(user)) = (
            self.session.context.access.config.verifier.as_ref(),
            self.session.user.as_deref(),
        ) else {
            return Err(RequestError::NotAuthenticated);
        };
        let identity = verifier.connection(token).map_err(|e| self.token_refused(e))?;
        if identity.user != user {
            return Err(self.token_refused(TokenError::WrongSubject));
        }
        *self.auth = Some(Auth::new(identity.expires, identity.rooms));
        Ok(())
    }

    fn token_refused(&self, error: TokenError) -> RequestError {
        self.session.context.metrics.auth_failure(error);
        tracing::debug!(id = self.session.id, reason = error.label(), "token refused");
        RequestError::InvalidToken
    }

    fn leave(&mut self, room: &str) -> Result<(), RequestError> {
        if !client::valid_room(room) {
            return Err(RequestError::InvalidRoom);
        }
        if let Some(index) = self.rooms.iter().position(|r| **r == *room) {
            self.rooms.swap_remove(index);
            self.session.context.hub.leave(room, self.session.id);
        }
        Ok(())
    }

    /// Acknowledges a request that carried an id; without one, go-push sends nothing and neither does herald.
    fn reply(&self, id: Option<&RawValue>, result: Result<(), RequestError>) {
        if let Err(error) = result {
            let kind = match error {
                RequestError::InvalidRoom => BadInput::InvalidRoom,
                RequestError::TooManyRooms => BadInput::TooManyRooms,
                RequestError::TooManyRoomsTotal => BadInput::TooManyRoomsTotal,
                RequestError::Forbidden => BadInput::Forbidden,
                RequestError::InvalidToken | RequestError::NotAuthenticated => BadInput::InvalidToken,
            };
            self.session.context.metrics.bad_input(kind);
        }
        if let Some(id) = id {
            let frame = match result {
                Ok(()) => client::ack(id),
                Err(error) => client::error(id, error),
            };
            self.session.deliver(&frame);
        }
    }

    pub(super) fn frame_error(&mut self, error: &FrameError) -> Flow {
        let kind = match error {
            FrameError::Protocol(_) => BadInput::Protocol,
            FrameError::InvalidUtf8 => BadInput::InvalidUtf8,
            FrameError::TooBig { .. } => BadInput::TooBig,
            FrameError::BadCompression => BadInput::BadCompression,
        };
        self.bad(kind, error.close_code(), &error.to_string())
    }

    fn bad(&self, kind: BadInput, code: u16, reason: &str) -> Flow {
        self.session.context.metrics.bad_input(kind);
        tracing::debug!(id = self.session.id, code, reason, "bad input, closing");
        Flow::Close {
            code,
            reason: reason.to_owned(),
            why: CloseReason::BadInput,
        }
    }
}
