//! A client's text commands, one at a time: the rate limit, decoding and validation, the
//! node's answer, and the reply (or error) queued in order. Reading frames, and writing the
//! replies, are the connection loop's; what a command does is the node's.

use crate::limits::{MessageRate, RateDecision};
use crate::metrics::DropReason;
use crate::node::{Node, Session};
use crate::protocol::{
    self, Command, CommandError, CommandKind, Disconnect, ErrorCode, Frame, RequestId,
};

/// Apply the rate limit to one client frame. Returns false when the frame must be dropped
/// (the client has been told, or is being closed).
pub(super) fn check_rate(
    node: &Node,
    session: &Session,
    rate: &mut MessageRate,
    id: Option<&RequestId>,
) -> bool {
    match rate.check() {
        RateDecision::Allowed => true,
        RateDecision::Limited => {
            node.metrics().rate_limited.inc();
            node.metrics().dropped(DropReason::RateLimited, 1);
            let err = CommandError::new(ErrorCode::RateLimited, "rate limit exceeded");
            session.outbox.reply(protocol::error(&err, id));
            false
        }
        RateDecision::Exceeded => {
            node.metrics().rate_limited.inc();
            node.metrics().dropped(DropReason::RateLimited, 1);
            session.outbox.closer().close(Disconnect::RateLimited);
            false
        }
    }
}

pub(super) async fn handle_text(
    node: &Node,
    session: &mut Session,
    rate: &mut MessageRate,
    text: &str,
) {
    if text == "ping" {
        if check_rate(node, session, rate, None) {
            node.metrics().received(CommandKind::TextPing);
            session.outbox.reply(Frame::plain_pong());
        }
        return;
    }
    let decoded = protocol::decode_command(text);
    let id = decoded.id.as_ref();
    if !check_rate(node, session, rate, id) {
        return;
    }
    let command = match decoded.result {
        Ok(command) => command,
        Err(err) => {
            node.metrics().received(CommandKind::Invalid);
            reply_error(node, session, &err, id);
            return;
        }
    };
    node.metrics().received(command.kind());
    let reply = match command {
        Command::Join {
            room,
            since,
            history,
        } => match node.join(session, &room, since.as_deref(), history).await {
            Ok(outcome) => {
                let joined = protocol::joined(&room, id, outcome.recovered, outcome.history);
                session.outbox.reply(joined);
                for frame in outcome.replay {
                    session.outbox.reply(frame);
                }
                if let Some((gate, after)) = outcome.gate {
                    node.open_gate(session, gate, after);
                }
                return;
            }
            Err(err) => Err(err),
        },
        Command::Leave { room } => node
            .leave(session, &room)
            .await
            .map(|()| protocol::left(&room, id)),
        Command::Publish {
            room,
            data,
            echo,
            key,
        } => node
            .publish_from_client(session, &room, data, echo, key)
            .await
            .map(|msg_id| protocol::ack(&room, &msg_id, id)),
        Command::Ping => Ok(protocol::pong(id)),
        Command::Presence { room } => node
            .presence(session, &room)
            .await
            .map(|list| protocol::presence(&room, &list, id)),
        Command::Refresh { token } => refresh(node, session, &token.0, id).await,
    };
    match reply {
        Ok(frame) => {
            session.outbox.reply(frame);
        }
        Err(err) => reply_error(node, session, &err, id),
    }
}

/// `refresh`: the rooms the new token no longer allows are left (`left` with reason
/// `forbidden`) before the reply, so a client that reads `refreshed` knows its rooms.
async fn refresh(
    node: &Node,
    session: &mut Session,
    token: &str,
    id: Option<&RequestId>,
) -> Result<Frame, CommandError> {
    let refreshed = node.refresh(session, token).await?;
    for room in &refreshed.left {
        session
            .outbox
            .reply(protocol::left_because(room, ErrorCode::Forbidden.as_str()));
    }
    Ok(protocol::refreshed(refreshed.exp, id))
}

pub(super) fn reply_error(
    node: &Node,
    session: &Session,
    err: &CommandError,
    id: Option<&RequestId>,
) {
    node.metrics().invalid(err.code);
    if err.code == ErrorCode::BadRequest {
        node.metrics().dropped(DropReason::Invalid, 1);
    }
    session.outbox.reply(protocol::error(err, id));
}
