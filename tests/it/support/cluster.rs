//! A real Redis Cluster for integration tests: `redis-server` processes in cluster mode on
//! loopback, joined with `redis-cli --cluster create`.
//!
//! Everything here is synchronous (std processes, the `redis` crate's sync connections, short
//! polling sleeps). Calling it from a `#[tokio::test(flavor = "multi_thread")]` is fine: it
//! blocks one worker thread for a few seconds while the others keep running. From a
//! current-thread runtime, wrap calls in `tokio::task::spawn_blocking`.
//!
//! Every node is SIGKILLed and reaped on drop (also when a test panics) and the cluster's temp
//! dir is removed. Every wait polls with a bounded deadline ([`CLUSTER_WAIT`] for cluster-wide
//! convergence, [`WAIT`] for anything else); sleeps only pace the polling.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

/// The bound for a cluster-wide convergence: creation, failover.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(30);

/// `cluster-node-timeout` used by [`RedisCluster::start`].
pub const DEFAULT_NODE_TIMEOUT_MS: u64 = 2000;

/// Hash slots in a Redis Cluster.
pub const SLOTS: u32 = 16384;

/// Node ports are drawn from here, so that the cluster bus port (port + 10000) is at most
/// 32767: neither the port nor the bus port is then in Linux's default ephemeral range
/// (32768..=60999), where an outgoing connection of another test could hold it.
const PORT_RANGE: std::ops::Range<u16> = 20000..22768;

/// How often we re-check while waiting.
const POLL: Duration = Duration::from_millis(50);

/// One `(first slot, last slot, master port, sorted replica ports)` row of `CLUSTER SLOTS`.
type SlotRange = (u16, u16, u16, Vec<u16>);

struct Node {
    port: u16,
    /// `None` once killed.
    child: Option<Child>,
}

/// A Redis Cluster of `masters` masters with `replicas_per_master` replicas each.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    replicas_per_master: usize,
    node_timeout_ms: u64,
    /// The slot ranges each killed node served (as master) when it was killed.
    killed: HashMap<u16, Vec<(u16, u16)>>,
}

impl RedisCluster {
    /// Start a cluster with `cluster-node-timeout` [`DEFAULT_NODE_TIMEOUT_MS`]. Blocks (see the
    /// module docs) until every node agrees on a full slot map, reports `cluster_state:ok`, and
    /// every replica's link to its master is up. Redis needs `masters >= 3`.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        Self::start_with_timeout(masters, replicas_per_master, DEFAULT_NODE_TIMEOUT_MS)
    }

    /// [`RedisCluster::start`] with a given `cluster-node-timeout` (milliseconds). Failure
    /// detection takes about this long; a failover about this plus 1 to 2 seconds.
    pub fn start_with_timeout(
        masters: usize,
        replicas_per_master: usize,
        node_timeout_ms: u64,
    ) -> RedisCluster {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let dir = std::env::temp_dir().join(format!(
            "roomcast-cluster-{}-{:016x}",
            std::process::id(),
            random_u64()
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster temp dir");
        // Built before anything is started, so that a panic below still stops what was.
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
            replicas_per_master,
            node_timeout_ms,
            killed: HashMap::new(),
        };
        for _ in 0..masters * (1 + replicas_per_master) {
            cluster.spawn_node();
        }
        cluster.create();
        cluster.wait_settled();
        cluster
    }

    /// `redis://127.0.0.1:PORT` for every node (killed ones included), in start order.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| url(n.port)).collect()
    }

    /// Every node's port (killed ones included), in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of the nodes still running (not [`RedisCluster::kill`]ed).
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The masters that serve slots now, sorted, as the first live node sees them
    /// (`CLUSTER SLOTS`). A killed master stays listed until a failover takes its slots.
    pub fn master_ports(&self) -> Vec<u16> {
        let port = self.any_live_port();
        let ranges = cluster_slots(port).unwrap_or_else(|e| panic!("CLUSTER SLOTS on {port}: {e}"));
        let masters: BTreeSet<u16> = ranges.iter().map(|r| r.2).collect();
        masters.into_iter().collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.any_live_port();
        let slot: i64 = query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT on {port}: {e}"));
        u16::try_from(slot).expect("a slot fits u16")
    }

    /// The port of the master serving `slot`, as the first live node sees it.
    pub fn master_port_for_slot(&self, slot: u16) -> u16 {
        let port = self.any_live_port();
        let ranges = cluster_slots(port).unwrap_or_else(|e| panic!("CLUSTER SLOTS on {port}: {e}"));
        ranges
            .iter()
            .find(|r| r.0 <= slot && slot <= r.1)
            .map(|r| r.2)
            .unwrap_or_else(|| panic!("slot {slot} is not served, per node {port}: {ranges:?}"))
    }

    /// A replica of the master on `master_port` (the lowest port if several), as the first live
    /// node sees it. Panics if that node is not a master or has no replica listed.
    pub fn replica_of(&self, master_port: u16) -> u16 {
        let port = self.any_live_port();
        let ranges = cluster_slots(port).unwrap_or_else(|e| panic!("CLUSTER SLOTS on {port}: {e}"));
        ranges
            .iter()
            .find(|r| r.2 == master_port)
            .and_then(|r| r.3.first().copied())
            .unwrap_or_else(|| {
                panic!("no replica of master {master_port}, per node {port}: {ranges:?}")
            })
    }

    /// Kill one node (SIGKILL) and wait for it to exit. Remembers the slots it served, for
    /// [`RedisCluster::wait_for_failover`].
    pub fn kill(&mut self, port: u16) {
        // The node's own view of what it serves, taken while it still runs.
        let served: Vec<(u16, u16)> = cluster_slots(port)
            .unwrap_or_else(|e| panic!("CLUSTER SLOTS on {port} before killing it: {e}"))
            .into_iter()
            .filter(|r| r.2 == port)
            .map(|r| (r.0, r.1))
            .collect();
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {port} was already killed"));
        let _ = child.kill();
        let _ = child.wait();
        self.killed.insert(port, served);
    }

    /// Wait (at most [`CLUSTER_WAIT`]) until one surviving node is master of every slot the
    /// killed `dead_port` served, and every surviving node reports `cluster_state:ok` and the
    /// same slot map. Returns the new master's port. Needs `replicas_per_master >= 1`; the new
    /// master has no replica, so a second failover of the same shard cannot happen.
    pub fn wait_for_failover(&self, dead_port: u16) -> u16 {
        let served = self
            .killed
            .get(&dead_port)
            .unwrap_or_else(|| panic!("node {dead_port} was not killed with RedisCluster::kill"));
        assert!(
            !served.is_empty(),
            "node {dead_port} served no slots when it was killed (a replica?)"
        );
        assert!(
            self.replicas_per_master >= 1,
            "a failover needs replicas_per_master >= 1"
        );
        let mut new_master = 0;
        self.wait_until("failover", |cluster| {
            let map = cluster.agreed_healthy_map()?;
            let mut owners = BTreeSet::new();
            for &(first, last) in served {
                for r in map.iter().filter(|r| r.0 <= last && first <= r.1) {
                    owners.insert(r.2);
                }
            }
            let owners: Vec<u16> = owners.into_iter().collect();
            let &[owner] = owners.as_slice() else {
                return Err(format!("the dead node's slots are served by {owners:?}"));
            };
            if owner == dead_port || !cluster.live_ports().contains(&owner) {
                return Err(format!("the dead node's slots are still served by {owner}"));
            }
            new_master = owner;
            Ok(())
        });
        new_master
    }

    /// `PUBSUB SHARDCHANNELS` on one node, sorted.
    pub fn shard_channels(&self, port: u16) -> Vec<String> {
        let mut channels: Vec<String> = query(port, redis::cmd("PUBSUB").arg("SHARDCHANNELS"))
            .unwrap_or_else(|e| panic!("PUBSUB SHARDCHANNELS on {port}: {e}"));
        channels.sort();
        channels
    }

    /// `CLUSTER NODES` from every live node, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for port in self.live_ports() {
            let nodes = query::<String>(port, redis::cmd("CLUSTER").arg("NODES"))
                .unwrap_or_else(|e| format!("error: {e}\n"));
            out.push_str(&format!("--- CLUSTER NODES on {port}\n{nodes}"));
        }
        out
    }

    fn any_live_port(&self) -> u16 {
        *self.live_ports().first().expect("a live node")
    }

    /// Start one more node on a fresh port; a few tries in case another process takes the
    /// port (or its bus port) between our probe and the server's bind.
    fn spawn_node(&mut self) {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let taken: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
            let port = pick_port(&taken);
            let mut child = self.spawn_server(port);
            match wait_listening(&mut child, port) {
                Ok(()) => {
                    self.nodes.push(Node {
                        port,
                        child: Some(child),
                    });
                    return;
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(self.log_path(port)).unwrap_or_default();
                    failures.push(format!("port {port}: {why}\n{}", tail(&log, 10)));
                }
            }
        }
        panic!(
            "could not start a cluster node:\n{}",
            failures.join("\n---\n")
        );
    }

    fn spawn_server(&self, port: u16) -> Child {
        let dir = self.dir.to_str().expect("temp dir is UTF-8");
        let conf = self.dir.join(format!("nodes-{port}.conf"));
        let log = self.log_path(port);
        Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", dir])
            .args(["--logfile", log.to_str().expect("UTF-8 path")])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", conf.to_str().expect("UTF-8 path")])
            .args(["--cluster-node-timeout", &self.node_timeout_ms.to_string()])
            // A replica fails over however long ago it last heard from its master.
            .args(["--cluster-replica-validity-factor", "0"])
            // The default waits 5 s before a full sync to a replica.
            .args(["--repl-diskless-sync-delay", "0"])
            // CLUSTER SLOTS lists a replica only once its replication offset is not 0, which
            // on an idle master takes one replication ping (default every 10 s).
            .args(["--repl-ping-replica-period", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)")
    }

    fn log_path(&self, port: u16) -> PathBuf {
        self.dir.join(format!("redis-{port}.log"))
    }

    /// `redis-cli --cluster create`, bounded by [`CLUSTER_WAIT`].
    fn create(&self) {
        let mut command = Command::new("redis-cli");
        command.arg("--cluster").arg("create");
        for node in &self.nodes {
            command.arg(format!("127.0.0.1:{}", node.port));
        }
        command
            .args(["--cluster-replicas", &self.replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(command.spawn().expect("redis-cli on PATH"));
        let stdout = drain(child.0.stdout.take().expect("stdout"));
        let stderr = drain(child.0.stderr.take().expect("stderr"));
        let deadline = Instant::now() + CLUSTER_WAIT;
        let status = loop {
            if let Some(status) = child.0.try_wait().expect("redis-cli status") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(POLL);
        };
        drop(child); // Kills it if it still runs, which ends the output threads.
        let output = format!(
            "{}{}",
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default()
        );
        match status {
            Some(s) if s.success() => {}
            Some(s) => panic!("redis-cli --cluster create failed ({s}):\n{output}"),
            None => panic!("redis-cli --cluster create timed out:\n{output}"),
        }
    }

    /// After creation: every node agrees on a full map, with every replica in place and its
    /// replication link up.
    fn wait_settled(&self) {
        let expected_masters = self.nodes.len() / (1 + self.replicas_per_master);
        self.wait_until("the cluster to form", |cluster| {
            let map = cluster.agreed_healthy_map()?;
            let masters: BTreeSet<u16> = map.iter().map(|r| r.2).collect();
            if masters.len() != expected_masters {
                return Err(format!("masters {masters:?}, want {expected_masters}"));
            }
            if let Some(r) = map
                .iter()
                .find(|r| r.3.len() != cluster.replicas_per_master)
            {
                return Err(format!("slot range with replicas not in place: {r:?}"));
            }
            for port in cluster.live_ports() {
                let info: String = query(port, redis::cmd("INFO").arg("replication"))
                    .map_err(|e| format!("INFO replication on {port}: {e}"))?;
                if info_field(&info, "role") == Some("slave")
                    && info_field(&info, "master_link_status") != Some("up")
                {
                    return Err(format!("replica {port}: master link not up"));
                }
            }
            Ok(())
        });
    }

    /// The slot map, if every live node reports `cluster_state:ok`, knows every node, and
    /// returns the same full `CLUSTER SLOTS`.
    fn agreed_healthy_map(&self) -> Result<Vec<SlotRange>, String> {
        let mut agreed: Option<(u16, Vec<SlotRange>)> = None;
        for port in self.live_ports() {
            let info: String = query(port, redis::cmd("CLUSTER").arg("INFO"))
                .map_err(|e| format!("CLUSTER INFO on {port}: {e}"))?;
            if info_field(&info, "cluster_state") != Some("ok") {
                return Err(format!("node {port}: cluster_state not ok"));
            }
            let known = info_field(&info, "cluster_known_nodes");
            if known != Some(self.nodes.len().to_string().as_str()) {
                return Err(format!("node {port} knows {known:?} nodes"));
            }
            let map = cluster_slots(port).map_err(|e| format!("CLUSTER SLOTS on {port}: {e}"))?;
            let covered: u32 = map.iter().map(|r| u32::from(r.1 - r.0) + 1).sum();
            if covered != SLOTS {
                return Err(format!("node {port} sees {covered} slots served"));
            }
            match &agreed {
                None => agreed = Some((port, map)),
                Some((first, seen)) if *seen != map => {
                    return Err(format!(
                        "nodes {first} and {port} disagree:\n{seen:?}\n{map:?}"
                    ));
                }
                Some(_) => {}
            }
        }
        agreed
            .map(|(_, map)| map)
            .ok_or_else(|| "no live node".into())
    }

    /// Poll `check` until it succeeds, at most [`CLUSTER_WAIT`]; panic with its last complaint
    /// and every node's `CLUSTER NODES` otherwise.
    fn wait_until(&self, what: &str, mut check: impl FnMut(&Self) -> Result<(), String>) {
        let deadline = Instant::now() + CLUSTER_WAIT;
        loop {
            let why = match check(self) {
                Ok(()) => return,
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {CLUSTER_WAIT:?} waiting for {what}: {why}\n{}",
                    self.describe()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.kill();
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// A sync connection with bounded connect, read and write.
fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let connection = redis::Client::open(url(port))?.get_connection_with_timeout(WAIT)?;
    connection.set_read_timeout(Some(WAIT))?;
    connection.set_write_timeout(Some(WAIT))?;
    Ok(connection)
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    cmd.query(&mut connect(port)?)
}

/// `CLUSTER SLOTS` on one node, sorted by first slot, replicas sorted.
fn cluster_slots(port: u16) -> Result<Vec<SlotRange>, String> {
    let value: redis::Value =
        query(port, redis::cmd("CLUSTER").arg("SLOTS")).map_err(|e| e.to_string())?;
    let redis::Value::Array(rows) = value else {
        return Err(format!("unexpected reply {value:?}"));
    };
    let mut map = Vec::new();
    for row in rows {
        let redis::Value::Array(fields) = &row else {
            return Err(format!("unexpected row {row:?}"));
        };
        let bad = || format!("unexpected row {row:?}");
        let [first, last, master, replicas @ ..] = &fields[..] else {
            return Err(bad());
        };
        let first = slot_number(first).ok_or_else(bad)?;
        let last = slot_number(last).ok_or_else(bad)?;
        let master = node_port(master).ok_or_else(bad)?;
        let mut replicas = replicas
            .iter()
            .map(node_port)
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(bad)?;
        replicas.sort_unstable();
        map.push((first, last, master, replicas));
    }
    map.sort();
    Ok(map)
}

fn slot_number(value: &redis::Value) -> Option<u16> {
    match value {
        redis::Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    }
}

/// The port of a `[ip, port, id, ...]` node entry in `CLUSTER SLOTS`.
fn node_port(value: &redis::Value) -> Option<u16> {
    match value {
        redis::Value::Array(fields) => slot_number(fields.get(1)?),
        _ => None,
    }
}

/// `field:value` from an `INFO`-style reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':').map(str::trim))
}

/// Wait (at most [`WAIT`]) until a freshly spawned node answers PING, or fail if it exits.
fn wait_listening(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("redis-server exited: {status}"));
        }
        if query::<String>(port, &redis::cmd("PING")).is_ok_and(|pong| pong == "PONG") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not answering PING within {WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A random port in [`PORT_RANGE`] not in `taken`, where both it and its cluster bus port
/// (port + 10000) can be bound right now.
fn pick_port(taken: &[u16]) -> u16 {
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    for _ in 0..1000 {
        let port = PORT_RANGE.start + (random_u64() % span) as u16;
        if taken.contains(&port) {
            continue;
        }
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
    panic!("no free port pair in {PORT_RANGE:?}");
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

/// Read a pipe to the end on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process killed and reaped on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
