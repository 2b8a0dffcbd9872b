//! Replays the fuzz corpus with plain `cargo test`, so it runs in CI without cargo-fuzz.
//!
//! Owns nothing but the replay: every file under `fuzz/corpus/<target>/` (the seeds) and
//! `fuzz/regressions/<target>/` (minimised crashes) goes through `fuzz/checks.rs`, the very
//! checks the fuzz targets run, so neither the corpus nor a fixed crash can rot.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// `(target, file)` for every file under `fuzz/<kind>/`; panics on a directory that names no
/// target, so a renamed target cannot silently stop being replayed.
fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let root = fuzz_dir().join(kind);
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut inputs = Vec::new();
    for dir in dirs {
        let dir = dir.expect("readable directory entry").path();
        let target = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 directory name")
            .to_owned();
        assert!(
            checks::TARGETS.contains(&target.as_str()),
            "{} names no fuzz target (known: {:?})",
            dir.display(),
            checks::TARGETS
        );
        for file in std::fs::read_dir(&dir).expect("readable target directory") {
            let file = file.expect("readable directory entry").path();
            if file.is_file() {
                inputs.push((target.clone(), file));
            }
        }
    }
    inputs.sort();
    inputs
}

fn replay(inputs: &[(String, PathBuf)]) {
    for (target, file) in inputs {
        let data = std::fs::read(file).expect("readable input");
        let outcome = std::panic::catch_unwind(|| checks::check(target, &data));
        match outcome {
            Ok(known) => assert!(known, "unknown target {target}"),
            Err(_) => panic!("{target}: {} fails its checks", file.display()),
        }
    }
}

#[test]
fn seed_corpus_passes_every_check() {
    let inputs = inputs("corpus");
    for target in checks::TARGETS {
        assert!(
            inputs.iter().any(|(t, _)| t == target),
            "fuzz/corpus/{target}/ has no seed"
        );
    }
    replay(&inputs);
}

#[test]
fn minimised_crashes_stay_fixed() {
    replay(&inputs("regressions"));
}
