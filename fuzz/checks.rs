//! The properties checked by the fuzz targets, in one place.
//!
//! Owns one `check_*` function per fuzz target: each takes arbitrary bytes, feeds them to the
//! decoder the target is named after, and panics (so libFuzzer records a crash) when a decoder
//! panics or an invariant of docs/protocol.md does not hold. The fuzz targets under
//! `fuzz/fuzz_targets/` and the `cargo test` suite `tests/it/fuzz_regressions.rs` both include
//! this file with `#[path]`, so the seed corpus and every minimised crash are replayed in CI
//! with exactly the checks the fuzzer used.

use roomcast::auth::{glob_match, token_from_request};
use roomcast::protocol::{
    self, AdminPublish, AdminRoute, Command, CommandError, Envelope, ErrorCode, Frame,
    MAX_REQUEST_ID_CHARS, MAX_USER_BYTES, RequestId, Target, decode_admin_body, decode_command,
    decode_envelope, encode_envelope, validate_room,
};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The fuzz targets, by name: the directories of `fuzz/corpus/` and `fuzz/regressions/`.
pub const TARGETS: [&str; 4] = [
    "decode_command",
    "decode_envelope",
    "admin_body",
    "auth_inputs",
];

/// Run the check of `target` on `data`; `false` when there is no such target.
pub fn check(target: &str, data: &[u8]) -> bool {
    match target {
        "decode_command" => check_decode_command(data),
        "decode_envelope" => check_decode_envelope(data),
        "admin_body" => check_admin_body(data),
        "auth_inputs" => check_auth_inputs(data),
        _ => return false,
    }
    true
}

/// An error reply quotes at most this much of anything: a bad frame must not be reflected back
/// (or logged) at whatever size the client chose.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 256;

/// The fields of a server frame that the checks look at. Deserialising into a struct (rather
/// than `serde_json::Value`) also refuses duplicate keys, and leaves `data` as raw JSON, which
/// may hold what a `Value` cannot (numbers beyond f64, lone surrogate escapes).
#[derive(Deserialize)]
struct FrameFields<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    ts: Option<u64>,
}

/// A field that is there is `Some`, even when it is `null` (as `"data": null` may be).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

fn frame_fields(frame: &Frame) -> FrameFields<'_> {
    match serde_json::from_str(frame.text()) {
        Ok(fields) => fields,
        Err(err) => panic!(
            "frame is not a valid JSON object ({err}): {:?}",
            frame.text()
        ),
    }
}

fn id_json(id: &RequestId) -> serde_json::Value {
    serde_json::to_value(id).expect("a request id serialises")
}

fn assert_bounded_message(err: &CommandError) {
    assert!(
        err.message.len() <= MAX_ERROR_MESSAGE_BYTES,
        "error message of {} bytes: {:?}",
        err.message.len(),
        err.message
    );
}

/// The error frame for `err`: valid JSON, `type` `error`, the code and message as given, and
/// `id` exactly the request id.
fn check_error_frame(err: &CommandError, id: Option<&RequestId>) {
    let frame = protocol::error(err, id);
    let fields = frame_fields(&frame);
    assert_eq!(fields.kind, "error");
    assert_eq!(fields.code.as_deref(), Some(err.code.as_str()));
    assert_eq!(fields.message.as_deref(), Some(err.message.as_ref()));
    assert_eq!(
        fields.id,
        id.map(id_json),
        "error frame id: {}",
        frame.text()
    );
}

// ---- decode_command ----

/// Arbitrary bytes as one client text frame: when UTF-8, `decode_command` must not panic; a
/// request id it read is at most 64 characters and round-trips into every reply; rooms of
/// successful commands are valid; every reply frame is valid JSON; and a successful command,
/// written back in canonical form, decodes to the same command.
pub fn check_decode_command(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let decoded = decode_command(text);
    let id = decoded.id.as_ref();
    if let Some(RequestId::Str(s)) = id {
        assert!(
            s.chars().count() <= MAX_REQUEST_ID_CHARS,
            "id too long: {s:?}"
        );
    }
    // Whatever happens to the command, an error reply carries the id back.
    check_error_frame(&CommandError::new(ErrorCode::Internal, "fuzz"), id);

    let command = match &decoded.result {
        Err(err) => {
            assert_bounded_message(err);
            check_error_frame(err, id);
            return;
        }
        Ok(command) => command,
    };
    // Commands added to the protocol after these checks were written get only the checks
    // above; `if let` rather than `match` so that adding one does not break this file.
    let Some((frame, kind, room)) = reply(command, id) else {
        return;
    };
    let fields = frame_fields(&frame);
    assert_eq!(fields.kind, kind);
    assert_eq!(fields.id, id.map(id_json), "reply id: {}", frame.text());
    if let Some(room) = room {
        assert!(
            validate_room(room).is_ok(),
            "accepted invalid room {room:?}"
        );
        assert_eq!(fields.room.as_deref(), Some(room));
    }
    if let Command::Publish {
        room, data, key, ..
    } = command
    {
        let message = protocol::message(room, "m-1", data, "c-1", 7, key.as_deref());
        let fields = frame_fields(&message);
        assert_eq!(fields.kind, "message");
        assert_eq!(fields.data.map(RawValue::get), Some(data.get()));
    }

    let Some(canonical) = canonical_command(command, id) else {
        return;
    };
    let again = decode_command(&canonical);
    assert_eq!(again.id.as_ref(), id, "canonical form {canonical}");
    let again = again
        .result
        .unwrap_or_else(|err| panic!("canonical form {canonical} refused: {err:?}"));
    assert_eq!(
        canonical_command(&again, id).as_deref(),
        Some(canonical.as_str()),
        "decoding is not stable"
    );
}

/// The success reply to `command`, the `type` it must have, and the room it names.
fn reply<'a>(
    command: &'a Command,
    id: Option<&RequestId>,
) -> Option<(Frame, &'static str, Option<&'a str>)> {
    if let Command::Join { room, history, .. } = command {
        Some((
            protocol::joined(room, id, Some(true), *history),
            "joined",
            Some(room),
        ))
    } else if let Command::Leave { room } = command {
        Some((protocol::left(room, id), "left", Some(room)))
    } else if let Command::Publish { room, .. } = command {
        Some((protocol::ack(room, "m-1", id), "ack", Some(room)))
    } else if let Command::Presence { room } = command {
        let list = protocol::PresenceList::default();
        Some((protocol::presence(room, &list, id), "presence", Some(room)))
    } else if let Command::Ping = command {
        Some((protocol::pong(id), "pong", None))
    } else if let Command::Refresh { .. } = command {
        Some((protocol::refreshed(1_900_000_000, id), "refreshed", None))
    } else {
        None
    }
}

/// The command written back as the JSON text a well-behaved client would send.
fn canonical_command(command: &Command, id: Option<&RequestId>) -> Option<String> {
    let json = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let mut out = if let Command::Join {
        room,
        since,
        history,
    } = command
    {
        let mut out = format!(r#"{{"type":"join","room":{}"#, json(room));
        if let Some(since) = since {
            out.push_str(&format!(r#","since":{}"#, json(since)));
        }
        if let Some(history) = history {
            out.push_str(&format!(r#","history":{history}"#));
        }
        out
    } else if let Command::Leave { room } = command {
        format!(r#"{{"type":"leave","room":{}"#, json(room))
    } else if let Command::Publish {
        room,
        data,
        echo,
        key,
    } = command
    {
        let key = key
            .as_ref()
            .map(|k| format!(r#","key":{}"#, json(k)))
            .unwrap_or_default();
        format!(
            r#"{{"type":"publish","room":{},"data":{},"echo":{echo}{key}"#,
            json(room),
            data.get()
        )
    } else if let Command::Presence { room } = command {
        format!(r#"{{"type":"presence","room":{}"#, json(room))
    } else if let Command::Ping = command {
        r#"{"type":"ping""#.to_owned()
    } else if let Command::Refresh { token } = command {
        format!(r#"{{"type":"refresh","token":{}"#, json(&token.0))
    } else {
        return None;
    };
    if let Some(id) = id {
        out.push_str(&format!(r#","id":{}"#, id_json(id)));
    }
    out.push('}');
    Some(out)
}

// ---- decode_envelope ----

fn fuzz_targets() -> [Target; 3] {
    [
        Target::Room("fuzz:room".into()),
        Target::User("fuzz-user".into()),
        Target::Broadcast,
    ]
}

/// The client frame of an envelope: valid JSON, the `type` its target calls for, and the
/// envelope's fields exactly.
fn check_envelope_frame(envelope: &Envelope) {
    let frame = envelope.frame();
    let fields = frame_fields(&frame);
    let kind = match &envelope.target {
        Target::Room(room) => {
            assert_eq!(fields.room.as_deref(), Some(room.as_ref()));
            assert_eq!(fields.from.as_deref(), Some(envelope.from.as_str()));
            "message"
        }
        Target::User(_) => "notification",
        Target::Broadcast => "broadcast",
    };
    assert_eq!(fields.kind, kind, "{}", frame.text());
    assert_eq!(
        fields.id,
        Some(serde_json::Value::String(envelope.id.clone()))
    );
    assert_eq!(fields.ts, Some(envelope.ts));
    assert_eq!(fields.data.map(RawValue::get), Some(envelope.data.get()));
}

/// What a node PUBLISHes decodes, on every other node, to the same publication.
fn check_envelope_round_trip(envelope: &Envelope) {
    let bytes = encode_envelope(envelope);
    let back = decode_envelope(
        envelope.target.clone(),
        &bytes,
        || panic!("an encoded envelope carries its id"),
        u64::MAX,
    );
    assert_eq!(back.target, envelope.target);
    assert_eq!(back.id, envelope.id);
    assert_eq!(back.from, envelope.from);
    assert_eq!(back.ts, envelope.ts);
    assert_eq!(back.data.get(), envelope.data.get());
    assert_eq!(back.origin, envelope.origin);
    assert_eq!(back.key, envelope.key);
}

/// Arbitrary bytes as a payload received on each kind of Redis channel.
pub fn check_decode_envelope(data: &[u8]) {
    // The same payload as a control envelope (user and broadcast channels): one that decodes
    // encodes back to itself.
    if let Some(Ok(control)) = roomcast::protocol::decode_control(data) {
        let again = roomcast::protocol::encode_control(&control);
        assert_eq!(
            roomcast::protocol::decode_control(&again),
            Some(Ok(control))
        );
    }
    for target in fuzz_targets() {
        let envelope = decode_envelope(target.clone(), data, || "fresh-1".to_owned(), 1234);
        assert_eq!(envelope.target, target);
        check_envelope_frame(&envelope);
        check_envelope_round_trip(&envelope);
    }
}

// ---- admin_body ----

/// Arbitrary bytes as the body of each admin publish route.
pub fn check_admin_body(data: &[u8]) {
    // The control routes' bodies: decoded or refused with a reason, never a panic.
    if let Ok((_, room)) = roomcast::protocol::decode_server_sub_body(data) {
        assert!(validate_room(&room).is_ok(), "accepted room {room:?}");
    }
    let _ = roomcast::protocol::decode_disconnect_body(data);
    let _ = roomcast::protocol::decode_revoke_body(data, 1);
    let mut accepted = Vec::new();
    for route in [
        AdminRoute::Publish,
        AdminRoute::Notify,
        AdminRoute::Broadcast,
    ] {
        match decode_admin_body(route, data) {
            Ok(AdminPublish {
                target,
                data: payload,
                key,
            }) => {
                match (&route, &target) {
                    (AdminRoute::Publish, Target::Room(room)) => {
                        assert!(validate_room(room).is_ok(), "accepted room {room:?}");
                    }
                    (AdminRoute::Notify, Target::User(user)) => {
                        assert!(!user.is_empty() && user.len() <= MAX_USER_BYTES);
                    }
                    (AdminRoute::Broadcast, Target::Broadcast) => {}
                    _ => panic!("{route:?} decoded to {target:?}"),
                }
                let envelope = Envelope {
                    target,
                    id: "a-1".to_owned(),
                    data: payload,
                    from: "server".to_owned(),
                    ts: 99,
                    origin: None,
                    key,
                };
                check_envelope_frame(&envelope);
                check_envelope_round_trip(&envelope);
                accepted.push((route, envelope.data.get().to_owned()));
            }
            Err(err) => {
                assert_bounded_message(&err);
                let body = protocol::admin_error_body(err.code.as_str(), &err.message);
                let value: serde_json::Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("admin error body {body:?}: {e}"));
                assert_eq!(value["error"]["code"], err.code.as_str());
                assert_eq!(value["error"]["message"], err.message.as_ref());
            }
        }
    }
    // `/api/broadcast` needs only `data`: a body good for a narrower route is good for it too,
    // with the same data.
    let broadcast = accepted
        .iter()
        .find(|(route, _)| *route == AdminRoute::Broadcast)
        .map(|(_, data)| data.as_str());
    for (route, data) in &accepted {
        assert_eq!(broadcast, Some(data.as_str()), "{route:?} accepted it");
    }
}

// ---- auth_inputs ----

/// Arbitrary bytes, read (lossily) as UTF-8 and split on `\n` into a query string, an
/// `Authorization` header, a glob pattern and a text (missing parts are empty).
///
/// `token_from_request` must not panic, prefers the query, percent-decodes exactly as the
/// URL standard does and round-trips any percent-encoded token; `glob_match` must not panic,
/// agrees with a plain dynamic-programming matcher, matches a string without wildcards
/// against itself, and matches every text made by filling in a pattern's wildcards.
pub fn check_auth_inputs(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let mut parts = input.splitn(4, '\n');
    let query = parts.next().unwrap_or_default();
    let header = parts.next().unwrap_or_default();
    let pattern = parts.next().unwrap_or_default();
    let text = parts.next().unwrap_or_default();

    check_token_sources(query, header);
    check_token_sources(text, pattern);
    for token in [pattern, text] {
        if !token.is_empty() {
            let query = format!("a=1&token={}&token=other", percent_encode(token));
            assert_eq!(
                token_from_request(Some(&query), None).as_deref(),
                Some(token),
                "percent-encoded token {query:?}"
            );
        }
    }

    check_glob(pattern, text);
    check_glob(text, pattern);
    check_glob(query, header);
}

fn check_token_sources(query: &str, header: &str) {
    assert_eq!(token_from_request(None, None), None);
    let from_query = token_from_request(Some(query), None);
    let from_header = token_from_request(None, Some(header));
    let both = token_from_request(Some(query), Some(header));
    for token in [&from_query, &from_header, &both].into_iter().flatten() {
        assert!(!token.is_empty(), "empty token from {query:?} / {header:?}");
    }
    assert_eq!(
        from_query,
        reference_query_token(query),
        "token of query {query:?}"
    );
    let expected_header = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty());
    assert_eq!(from_header.as_deref(), expected_header, "{header:?}");
    assert_eq!(both, from_query.or(from_header), "the query wins");
}

/// The first non-empty `token=` value of `query`, decoded as `application/x-www-form-urlencoded`:
/// `%` and two ASCII hex digits is a byte, `+` a space, anything else itself.
fn reference_query_token(query: &str) -> Option<String> {
    let value = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("token="))
        .find(|value| !value.is_empty())?;
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digit = |at: usize| bytes.get(at).copied().and_then(hex_digit);
        match (bytes[i], digit(i + 1), digit(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi * 16 + lo);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Every byte outside the URL "unreserved" set as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Longest pattern and text compared with the quadratic reference matcher.
const GLOB_REFERENCE_MAX_CHARS: usize = 256;

fn check_glob(pattern: &str, text: &str) {
    let matched = glob_match(pattern, text);
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    if p.len() <= GLOB_REFERENCE_MAX_CHARS && t.len() <= GLOB_REFERENCE_MAX_CHARS {
        assert_eq!(
            matched,
            reference_glob(&p, &t),
            "glob_match({pattern:?}, {text:?})"
        );
    }
    for s in [pattern, text] {
        if !s.contains(['*', '?']) {
            assert!(glob_match(s, s), "{s:?} does not match itself");
        }
    }
    assert!(glob_match("*", text));
    // Fill `*` with the text and `?` with its first character (or `x`).
    let stars = pattern.matches('*').count();
    if pattern.len() + stars * text.len() <= 4 * GLOB_REFERENCE_MAX_CHARS {
        let one = text.chars().next().unwrap_or('x');
        let mut filled = String::new();
        for c in pattern.chars() {
            match c {
                '*' => filled.push_str(text),
                '?' => filled.push(one),
                c => filled.push(c),
            }
        }
        assert!(
            glob_match(pattern, &filled),
            "{pattern:?} does not match its instance {filled:?}"
        );
    }
}

/// `*` any run of characters, `?` exactly one: `matches[j]` is whether the pattern read so
/// far matches the first `j` characters of the text.
fn reference_glob(pattern: &[char], text: &[char]) -> bool {
    let mut matches = vec![false; text.len() + 1];
    matches[0] = true;
    for &pc in pattern {
        let mut next = vec![false; text.len() + 1];
        if pc == '*' {
            let mut any = false;
            for (j, m) in matches.iter().enumerate() {
                any |= *m;
                next[j] = any;
            }
        } else {
            for j in 1..=text.len() {
                next[j] = matches[j - 1] && (pc == '?' || pc == text[j - 1]);
            }
        }
        matches = next;
    }
    matches[text.len()]
}
