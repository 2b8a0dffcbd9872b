//! The `roomcast` subcommands (`token`, `check-config`, `publish`, `notify`, `broadcast`),
//! run as the built binary against real nodes and real WebSocket clients.

use std::path::PathBuf;
use std::process::{Output, Stdio};

use crate::support::*;
use roomcast::config::{AuthMode, Config};
use serde_json::{Value, json};

const SECRET: &str = "cli-test-secret-of-reasonable-length";
const API_KEY: &str = "cli-admin-key";

/// Run `roomcast ARGS` with no inherited `ROOMCAST_*` variable but `envs`, and wait for it,
/// at most [`WAIT`]. `kill_on_drop` is the guard: when the wait times out or the test fails,
/// dropping the child kills it.
async fn roomcast(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomcast"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ROOMCAST")) {
        command.env_remove(key);
    }
    command
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("spawn roomcast");
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("roomcast finishes in time")
        .expect("roomcast output")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The command failed with `status`, printed nothing on stdout, and its message has `needles`.
fn assert_failed(output: &Output, status: i32, needles: &[&str]) {
    let errors = stderr(output);
    assert_eq!(output.status.code(), Some(status), "{errors}");
    assert!(stdout(output).is_empty(), "{}", stdout(output));
    for needle in needles {
        assert!(errors.contains(needle), "{needle}: {errors}");
    }
}

/// A configuration file of this test, removed on drop.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(name: &str, toml: &str) -> ConfigFile {
        let path =
            std::env::temp_dir().join(format!("roomcast-cli-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, toml).expect("write the configuration");
        ConfigFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn key_path(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn jwt_node_config() -> Config {
    let mut config = test_config();
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwt_secret = Some(SECRET.into());
    config
}

/// `roomcast token ARGS`: the token it prints, after checking it succeeded.
async fn mint(args: &[&str]) -> String {
    let output = roomcast(&[&["token"], args].concat(), &[]).await;
    assert!(output.status.success(), "token: {}", stderr(&output));
    stdout(&output)
}

async fn connect_with(node: &TestNode, token: &str) -> Client {
    Client::connect(&format!("{}?token={token}", node.ws_url())).await
}

#[tokio::test]
async fn a_minted_token_is_accepted_and_its_rooms_claim_enforced() {
    let node = TestNode::start(jwt_node_config()).await;
    let file = ConfigFile::new(
        "hs256",
        &format!("[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\n"),
    );
    let token = mint(&[
        "--user",
        "alice",
        "--rooms",
        "chat:*",
        "--ttl",
        "10m",
        "--config",
        file.path(),
    ])
    .await;
    let mut alice = connect_with(&node, &token).await;
    assert_eq!(alice.welcome["user"], "alice");
    assert_eq!(alice.join("chat:general").await["type"], "joined");
    let denied = alice
        .request(json!({"type": "join", "room": "secret"}), "j")
        .await;
    assert_eq!(denied["code"], "forbidden", "{denied}");
}

#[tokio::test]
async fn a_node_with_a_public_key_needs_the_private_key() {
    for (public, private) in [
        ("rsa_public.pem", "rsa_private.pem"),
        ("ec_public.pem", "ec_private.pem"),
    ] {
        let mut config = test_config();
        config.auth.mode = AuthMode::Jwt;
        config.auth.jwt_public_key_file = Some(key_path(public).into());
        let node = TestNode::start(config).await;
        let file = ConfigFile::new(
            public,
            &format!(
                "[auth]\nmode = \"jwt\"\njwt_public_key_file = \"{}\"\n",
                key_path(public)
            ),
        );

        let refused = roomcast(&["token", "--user", "bob", "--config", file.path()], &[]).await;
        assert_failed(&refused, 1, &["--key"]);

        let token = mint(&[
            "--user",
            "bob",
            "--config",
            file.path(),
            "--key",
            &key_path(private),
        ])
        .await;
        let bob = connect_with(&node, &token).await;
        assert_eq!(bob.welcome["user"], "bob", "{public}");
    }
}

#[tokio::test]
async fn token_reads_the_secret_from_the_environment_or_says_there_is_none() {
    let node = TestNode::start(jwt_node_config()).await;
    let output = roomcast(
        &["token", "--user", "carol", "--ttl", "3600"],
        &[("ROOMCAST_AUTH__JWT_SECRET", SECRET)],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let carol = connect_with(&node, &stdout(&output)).await;
    assert_eq!(carol.welcome["user"], "carol");

    let output = roomcast(&["token", "--user", "carol"], &[]).await;
    assert_failed(&output, 1, &["auth.jwt_secret"]);
    let output = roomcast(&["token", "--user", "carol", "--ttl", "0"], &[]).await;
    assert_failed(&output, 2, &["--ttl"]);
}

#[tokio::test]
async fn check_config_says_ok_or_names_every_bad_key() {
    let good = ConfigFile::new("good", "[server]\nlisten = \"127.0.0.1:0\"\n");
    let output = roomcast(&["check-config", "--config", good.path()], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).starts_with("ok"), "{}", stdout(&output));

    // File, environment and flags all count, as when the node starts.
    let bad = ConfigFile::new(
        "bad",
        "[server]\npath = \"ws\"\n[limits]\nrate_per_sec = 0\n",
    );
    let output = roomcast(
        &[
            "check-config",
            "--config",
            bad.path(),
            "--admin-listen",
            "nowhere",
        ],
        &[("ROOMCAST_LIMITS__RATE_BURST", "0")],
    )
    .await;
    assert_failed(
        &output,
        2,
        &[
            "`admin.listen`",
            "`server.path`",
            "`limits.rate_per_sec`",
            "`limits.rate_burst`",
        ],
    );

    let unknown = ConfigFile::new("unknown", "[limits]\nrate_per_minute = 3\n");
    let output = roomcast(&["check-config", "--config", unknown.path()], &[]).await;
    assert_failed(&output, 2, &["limits.rate_per_minute"]);

    let missing_key = ConfigFile::new(
        "missing-key",
        "[auth]\nmode = \"jwt\"\njwt_public_key_file = \"/nonexistent/key.pem\"\n",
    );
    let output = roomcast(&["check-config", "--config", missing_key.path()], &[]).await;
    assert_failed(&output, 2, &["auth.jwt_public_key_file"]);
}

/// `roomcast SUBCOMMAND ARGS --admin URL` with the API key `key`; its id on success.
async fn send(node: &TestNode, args: &[&str], key: &str) -> Output {
    let admin = node.admin_url("");
    let args = [args, &["--admin", &admin]].concat();
    roomcast(&args, &[("ROOMCAST_ADMIN__API_KEY", key)]).await
}

fn accepted_id(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "{}", stderr(output));
    let answer: Value = serde_json::from_str(&stdout(output)).expect("the node's JSON answer");
    assert!(answer["id"].is_string(), "{answer}");
    answer["id"].clone()
}

#[tokio::test]
async fn publish_notify_and_broadcast_reach_a_member_through_the_admin_api() {
    let mut config = jwt_node_config();
    config.admin.api_key = Some(API_KEY.into());
    let node = TestNode::start(config).await;
    let secret = [("ROOMCAST_AUTH__JWT_SECRET", SECRET)];
    let token = roomcast(&["token", "--user", "dana"], &secret).await;
    let mut dana = connect_with(&node, &stdout(&token)).await;
    dana.join("news").await;

    let data = r#"{"headline":"hello","n":12345678901234567890}"#;
    let output = send(
        &node,
        &["publish", "--room", "news", "--key", "top", "--data", data],
        API_KEY,
    )
    .await;
    let id = accepted_id(&output);
    let message = dana.recv_type("message").await;
    assert_eq!(message["room"], "news");
    assert_eq!(message["id"], id);
    assert_eq!(message["key"], "top");
    assert_eq!(message["data"]["headline"], "hello");

    let output = send(&node, &["notify", "--user", "dana", "--data", "7"], API_KEY).await;
    let id = accepted_id(&output);
    let notification = dana.recv_type("notification").await;
    assert_eq!(
        (&notification["id"], &notification["data"]),
        (&id, &json!(7))
    );

    let output = send(&node, &["broadcast", "--data", r#""all hands""#], API_KEY).await;
    let id = accepted_id(&output);
    let broadcast = dana.recv_type("broadcast").await;
    assert_eq!(
        (&broadcast["id"], &broadcast["data"]),
        (&id, &json!("all hands"))
    );
}

#[tokio::test]
async fn a_refused_request_exits_1_naming_the_status() {
    let mut config = test_config();
    config.admin.api_key = Some(API_KEY.into());
    let node = TestNode::start(config).await;
    let output = send(&node, &["broadcast", "--data", "1"], "wrong-key").await;
    assert_failed(&output, 1, &["401"]);

    let output = send(
        &node,
        &["publish", "--room", "bad room", "--data", "1"],
        API_KEY,
    )
    .await;
    assert_failed(&output, 1, &["400", "invalid_room"]);

    let output = send(&node, &["broadcast", "--data", "{not json"], API_KEY).await;
    assert_failed(&output, 1, &["--data"]);
}
