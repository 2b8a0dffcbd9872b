//! ARCHITECTURE.md's invariants that can be read off the source text: which files may use
//! Redis, what the hub may import, where the `config` crate is used, where `unwrap`/`expect`
//! may appear, how long a file may grow. Reads every `.rs` file under `src/` with comments and
//! string literals blanked out (a small lexer, not a parser: good enough for these checks).
//! What needs types or the module graph (for example who calls what) is left to review.

use std::path::{Path, PathBuf};

/// A source file under `src/`: its path relative to the crate (`src/...`, `/` separated) and
/// its text with comments and string and char literals blanked (line numbers kept).
struct Source {
    path: String,
    code: String,
}

impl Source {
    /// `path:line: text` for every line of the code that `hit` accepts.
    fn lines_where(&self, mut hit: impl FnMut(&str) -> bool) -> Vec<String> {
        self.code
            .lines()
            .enumerate()
            .filter(|(_, line)| hit(line))
            .map(|(n, line)| format!("{}:{}: {}", self.path, n + 1, line.trim()))
            .collect()
    }
}

fn sources() -> Vec<Source> {
    sources_under("src")
}

/// Every `.rs` file under `dir` (relative to the package), comments and literals blanked.
fn sources_under(dir: &str) -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    collect_rs(&root.join(dir), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no source files under {dir}/");
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            let relative = file.strip_prefix(root).unwrap_or(&file);
            let path = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            Source {
                path,
                code: blank_comments_and_literals(&text),
            }
        })
        .collect()
}

fn collect_rs(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read dir {}: {e}", dir.display()));
    for entry in entries.map_while(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// `text` with every comment and every string, byte-string, raw-string and char literal
/// replaced by spaces (newlines kept), so that a check never matches prose or data.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, from: &[char]| {
        out.extend(from.iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
    };
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        let end = if rest.starts_with(&['/', '/']) {
            rest.iter().position(|&c| c == '\n').unwrap_or(rest.len())
        } else if rest.starts_with(&['/', '*']) {
            block_comment_len(rest)
        } else if let Some(len) = raw_string_len(rest) {
            len
        } else if rest[0] == '"' || rest.starts_with(&['b', '"']) {
            let open = if rest[0] == 'b' { 2 } else { 1 };
            open + quoted_len(&rest[open..], '"')
        } else if rest[0] == '\'' && (rest.get(1) == Some(&'\\') || rest.get(2) == Some(&'\'')) {
            1 + quoted_len(&rest[1..], '\'')
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        blank(&mut out, &rest[..end]);
        i += end;
    }
    out
}

/// Length of a (nested) block comment starting at `rest[0..2] == "/*"`.
fn block_comment_len(rest: &[char]) -> usize {
    let mut depth = 0;
    let mut i = 0;
    while i < rest.len() {
        if rest[i..].starts_with(&['/', '*']) {
            depth += 1;
            i += 2;
        } else if rest[i..].starts_with(&['*', '/']) {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    rest.len()
}

/// Length of a raw string (`r"…"`, `r#"…"#`, `br#"…"#`) starting at `rest[0]`, if one does.
fn raw_string_len(rest: &[char]) -> Option<usize> {
    let after_b = usize::from(rest.first() == Some(&'b'));
    if rest.get(after_b) != Some(&'r') {
        return None;
    }
    let hashes = rest[after_b + 1..]
        .iter()
        .take_while(|&&c| c == '#')
        .count();
    let open = after_b + 1 + hashes;
    if rest.get(open) != Some(&'"') {
        return None;
    }
    let close: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    let body = &rest[open + 1..];
    let end = (0..body.len())
        .find(|&k| body[k..].starts_with(&close))
        .map_or(body.len(), |k| k + close.len());
    Some(open + 1 + end)
}

/// Length up to and including the closing `quote` of a literal whose opening quote is just
/// before `body`, honouring backslash escapes.
fn quoted_len(body: &[char], quote: char) -> usize {
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            '\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    body.len()
}

/// Whether `line` has `name::` as the start of a path: an extern crate's path (`redis::x`,
/// `::redis::x`), not a module of ours further down a path (`broker::redis::x`).
fn starts_path(line: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    line.match_indices(&needle).any(|(at, _)| {
        let before = line[..at].trim_end_matches("::");
        let leading_colons = before.len() < at;
        let prev = before.chars().next_back();
        let ident = prev.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident && (leading_colons || !line[..at].ends_with(':'))
    })
}

/// `code` with every `#[cfg(test)]` item (a test module, a test-only function) blanked.
fn without_test_items(code: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find(ATTR) {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let end = item_len(item);
        out.extend(
            item[..end]
                .chars()
                .map(|c| if c == '\n' { '\n' } else { ' ' }),
        );
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Length of the item starting at `item` (its attributes included): up to the first `;` at
/// brace depth 0, or to the brace closing the first `{`.
fn item_len(item: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in item.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            ';' if depth == 0 => return i + 1,
            _ => {}
        }
    }
    item.len()
}

fn assert_none(what: &str, hits: Vec<String>) {
    assert!(hits.is_empty(), "{what}:\n{}", hits.join("\n"));
}

#[test]
fn the_lexer_blanks_comments_and_literals_only() {
    let code = "let a = \"redis::x\"; // redis::y\nlet b = r#\"x.unwrap()\"#; /* a /* b */ c */ \
                let c = '\"'; fn f<'a>(x: &'a str) { redis::z(b'\\'') }";
    let blanked = blank_comments_and_literals(code);
    assert_eq!(blanked.len(), code.len());
    assert!(!blanked.contains("redis::x") && !blanked.contains("redis::y"));
    assert!(!blanked.contains("unwrap") && !blanked.contains("/*"));
    assert!(
        blanked.contains("fn f<'a>(x: &'a str) { redis::z("),
        "{blanked}"
    );
    assert!(starts_path("use redis::AsyncCommands;", "redis"));
    assert!(starts_path("x: ::redis::Value", "redis"));
    assert!(!starts_path("crate::broker::redis::RedisBroker", "redis"));
    assert!(!starts_path("deadpool_redis::Pool", "redis"));
    let tests_out = without_test_items("a\n#[cfg(test)]\nmod tests {\n x.unwrap()\n}\nb");
    assert!(!tests_out.contains("unwrap"), "{tests_out}");
    assert!(
        tests_out.starts_with("a\n") && tests_out.ends_with("\nb"),
        "{tests_out}"
    );
}

/// Redis is the Redis broker's business: nothing outside `src/broker/redis*` (the files
/// `redis.rs` and `redis_cluster.rs` today, a `redis/` directory later) names the client crates.
#[test]
fn only_the_redis_broker_uses_the_redis_crates() {
    let mut hits = Vec::new();
    for source in sources()
        .iter()
        .filter(|s| !s.path.starts_with("src/broker/redis"))
    {
        hits.extend(
            source.lines_where(|line| {
                starts_path(line, "redis") || starts_path(line, "deadpool_redis")
            }),
        );
    }
    assert_none("redis / deadpool_redis outside src/broker/redis*", hits);
}

/// The hub routes frames between connections; it knows neither brokers nor sockets.
#[test]
fn the_hub_imports_no_broker_socket_or_redis() {
    let sources = sources();
    let hub = sources
        .iter()
        .find(|s| s.path == "src/hub.rs")
        .expect("src/hub.rs exists");
    let banned = ["crate::broker", "tokio_tungstenite", "tokio::net"];
    let hits = hub.lines_where(|line| {
        banned.iter().any(|b| line.contains(b))
            || starts_path(line, "redis")
            || starts_path(line, "deadpool_redis")
    });
    assert_none("src/hub.rs uses what it must not", hits);
}

/// Only `src/config/` reads configuration sources, through the `config` crate.
#[test]
fn only_src_config_uses_the_config_crate() {
    let mut hits = Vec::new();
    for source in sources()
        .iter()
        .filter(|s| !s.path.starts_with("src/config/"))
    {
        hits.extend(source.lines_where(|line| {
            let line = line.trim_start();
            line.starts_with("use config::")
                || line.starts_with("pub use config::")
                || line.contains("extern crate config")
                || line.match_indices("::config::").any(|(at, _)| {
                    let prev = line[..at].chars().next_back();
                    !prev.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                })
        }));
    }
    assert_none("the config crate outside src/config/", hits);
}

/// Places allowed an `unwrap()` / `expect(` outside tests and start-up, each with its reason:
/// `(path, text on the line)`. Empty today: the code has none (poisoned locks are recovered
/// with `unwrap_or_else(|p| p.into_inner())`, which this check does not match).
const UNWRAP_ALLOWED: &[(&str, &str)] = &[];

/// No panic on what a client or the network controls: `unwrap()` and `expect(` only in
/// `#[cfg(test)]` items and in start-up (`src/main.rs`, where failing fast is the point).
#[test]
fn no_unwrap_or_expect_outside_tests_and_start_up() {
    let mut hits = Vec::new();
    // A `tests.rs` is a test module in a file of its own (`#[cfg(test)] mod tests;`).
    let not_tests = |s: &&Source| s.path != "src/main.rs" && !s.path.ends_with("/tests.rs");
    for source in sources().iter().filter(not_tests) {
        let code = without_test_items(&source.code);
        let outside_tests = Source {
            path: source.path.clone(),
            code,
        };
        hits.extend(outside_tests.lines_where(|line| {
            (line.contains(".unwrap()") || line.contains(".expect("))
                && !UNWRAP_ALLOWED
                    .iter()
                    .any(|(path, text)| *path == source.path && line.contains(text))
        }));
    }
    assert_none("unwrap()/expect( outside tests and src/main.rs", hits);
}

/// reqwest here has rustls without a provider (the node hands its own clients ring): a client
/// built before anything installed the process-wide provider panics. Which test runs first
/// decides that, so the tests' own clients come from `support::http_client()`, which installs
/// it first.
#[test]
fn the_tests_build_http_clients_through_support() {
    let hits = sources_under("tests/it")
        .into_iter()
        .filter(|s| s.path != "tests/it/support/mod.rs")
        .flat_map(|s| {
            s.lines_where(|line| {
                [
                    "reqwest::Client::new(",
                    "reqwest::Client::builder(",
                    "reqwest::get(",
                ]
                .iter()
                .any(|call| line.contains(call))
            })
        })
        .collect();
    assert_none("reqwest clients built outside support::http_client()", hits);
}

/// The longest a source file may grow (CONTRIBUTING: split a file before it gets there).
/// The module a source file is: `src/node/mod.rs` → `node`, `src/broker/redis/pubsub.rs` →
/// `broker::redis::pubsub`; `lib.rs` and `main.rs` are the crate root.
fn module_of(path: &str) -> String {
    let inner = path.trim_start_matches("src/").trim_end_matches(".rs");
    let inner = inner.trim_end_matches("/mod");
    match inner {
        "lib" | "main" => String::new(),
        _ => inner.replace('/', "::"),
    }
}

/// The top-level modules (`node`, `broker`, …) a file's code names through `crate::`.
fn top_level_uses(code: &str) -> std::collections::BTreeSet<String> {
    code.match_indices("crate::")
        .filter(|(at, _)| !code[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .filter_map(|(at, _)| {
            let rest = &code[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// A cycle in `graph`, as the path that closes it, if there is one.
fn find_cycle(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        state: &mut std::collections::BTreeMap<String, bool>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(true) => {
                let from = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            Some(false) => return None,
            None => {}
        }
        state.insert(node.to_owned(), true);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node.to_owned(), false);
        None
    }
    let mut state = std::collections::BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut state, &mut Vec::new()))
}

/// Imports flow one way between the crate's top-level modules (ARCHITECTURE.md lists the
/// order): no module reaches, through `crate::`, one that reaches it back.
#[test]
fn the_top_level_modules_import_each_other_without_a_cycle() {
    let mut graph = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for source in sources() {
        let module = module_of(&source.path);
        let Some(top) = module.split("::").next().filter(|t| !t.is_empty()) else {
            continue;
        };
        let uses = top_level_uses(&without_test_items(&source.code));
        let entry = graph.entry(top.to_owned()).or_default();
        entry.extend(uses.into_iter().filter(|used| used != top));
    }
    assert!(
        graph.contains_key("node") && graph["node"].contains("broker"),
        "the graph was not read: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules: {}",
            cycle.join(" → ")
        );
    }
}

const MAX_LINES: usize = 700;

/// The last check, and the one expected to fail until the pending splits of the longest
/// files have landed: it names every file over [`MAX_LINES`].
#[test]
fn zz_no_source_file_over_700_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let too_long: Vec<String> = sources()
        .iter()
        .filter_map(|source| {
            let text = std::fs::read_to_string(root.join(&source.path)).ok()?;
            let lines = text.lines().count();
            (lines > MAX_LINES).then(|| format!("{}: {lines} lines", source.path))
        })
        .collect();
    assert_none(
        &format!("source files over {MAX_LINES} lines (split them)"),
        too_long,
    );
}
