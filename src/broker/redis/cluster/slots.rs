//! The cluster's slot map: which master owns which hash slot (`CLUSTER SLOTS`), and the hash
//! slot of a key or shard channel. Leaves connections and subscriptions to the cluster task.

use redis::{ConnectionInfo, RedisError, Value};

/// Hash slots of a Redis Cluster.
const SLOTS: u32 = 16384;

/// Why a slot map could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SlotMapError {
    #[error("CLUSTER SLOTS: {0}")]
    Malformed(&'static str),
    #[error("CLUSTER SLOTS: slot {0} has no master")]
    Uncovered(u32),
    #[error("CLUSTER SLOTS")]
    Redis(#[from] RedisError),
    #[error("{addr}")]
    At {
        addr: String,
        #[source]
        source: Box<SlotMapError>,
    },
    #[error("no node to ask for the slot map")]
    NoNode,
}

/// Which hash slot a key (or a shard channel) belongs to: CRC16 (XMODEM) of the key, or of its
/// hash tag (the part between the first `{` and the next `}`, when not empty), modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    (u32::from(crc) % SLOTS) as u16
}

/// The masters and the slot ranges they serve, sorted by first slot, covering every slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotMap(Vec<(u16, u16, String)>);

impl SlotMap {
    pub(crate) fn owner(&self, slot: u16) -> &str {
        let index = self.0.partition_point(|(start, _, _)| *start <= slot);
        // Coverage was checked when the map was read: slot lies in range index - 1.
        self.0
            .get(index.saturating_sub(1))
            .map_or("", |(_, _, addr)| addr.as_str())
    }

    pub(crate) fn masters(&self) -> Vec<String> {
        let mut masters: Vec<String> = self.0.iter().map(|(_, _, addr)| addr.clone()).collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// Parse a `CLUSTER SLOTS` answer from `queried` (whose host stands in for an empty one).
    fn parse(value: &Value, queried_host: &str) -> Result<SlotMap, SlotMapError> {
        let Value::Array(ranges) = value else {
            return Err(SlotMapError::Malformed("not an array"));
        };
        let mut map = Vec::with_capacity(ranges.len());
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err(SlotMapError::Malformed("a range is not an array"));
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(SlotMapError::Malformed(
                    "a range lacks its bounds or master",
                ));
            };
            let host = match master.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                _ => return Err(SlotMapError::Malformed("a master without a host")),
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return Err(SlotMapError::Malformed("a master without a port"));
            };
            let host = if host.is_empty() || host == "?" {
                queried_host.to_owned()
            } else {
                host
            };
            let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
                return Err(SlotMapError::Malformed("a slot out of range"));
            };
            map.push((start, end, format!("{host}:{port}")));
        }
        map.sort();
        let mut next: u32 = 0;
        for (start, end, _) in &map {
            if u32::from(*start) != next || end < start {
                return Err(SlotMapError::Uncovered(next));
            }
            next = u32::from(*end) + 1;
        }
        if next != SLOTS {
            return Err(SlotMapError::Uncovered(next));
        }
        Ok(SlotMap(map))
    }
}
/// Ask one node for the slot map.
pub(crate) async fn query_slots(
    info: ConnectionInfo,
    config: &redis::AsyncConnectionConfig,
    host: &str,
) -> Result<SlotMap, SlotMapError> {
    let client = redis::Client::open(info)?;
    let mut conn = client
        .get_multiplexed_async_connection_with_config(config)
        .await?;
    let value: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    SlotMap::parse(&value, host)
}

pub(crate) fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag hashes the whole key.
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        // A room's channel and its history keys share a slot.
        assert_eq!(
            key_slot(b"roomcast:room:news"),
            key_slot(b"{roomcast:room:news}:log")
        );
    }

    #[test]
    fn slot_maps_must_cover_every_slot() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |start: i64, end: i64, master: Value| {
            Value::Array(vec![Value::Int(start), Value::Int(end), master])
        };
        let full = Value::Array(vec![
            range(5461, 16383, node("10.0.0.2", 7001)),
            range(0, 5460, node("", 7000)),
        ]);
        let map = SlotMap::parse(&full, "10.0.0.1").expect("complete map");
        assert_eq!(map.owner(0), "10.0.0.1:7000");
        assert_eq!(map.owner(5460), "10.0.0.1:7000");
        assert_eq!(map.owner(5461), "10.0.0.2:7001");
        assert_eq!(map.owner(16383), "10.0.0.2:7001");
        assert_eq!(map.masters().len(), 2);

        let gap = Value::Array(vec![
            range(0, 5000, node("h", 1)),
            range(5461, 16383, node("h", 2)),
        ]);
        assert!(SlotMap::parse(&gap, "h").is_err());
        let short = Value::Array(vec![range(0, 100, node("h", 1))]);
        assert!(SlotMap::parse(&short, "h").is_err());
        assert!(SlotMap::parse(&Value::Nil, "h").is_err());
    }
}
