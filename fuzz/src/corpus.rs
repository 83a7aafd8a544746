//! Replays a checked-in seed corpus (`fuzz/corpus/<target>/`) through a one-input function.
//!
//! A seed's name says what the parser must do with it: `ok-*` is accepted, `bad-*` is rejected
//! with a non-empty message; any other name (a crash reproducer, an input libFuzzer added) only
//! has to run without a panic. A missing or empty corpus, a corpus without both an `ok-` and a
//! `bad-` seed, and a seed over [`MAX_SEED_BYTES`] all fail the replay.

use std::path::{Path, PathBuf};

/// Largest seed file kept in the corpus.
pub const MAX_SEED_BYTES: usize = 8 * 1024;

/// The corpus folder of `target`, from the manifest folder of a workspace crate.
#[must_use]
pub fn dir(manifest_dir: &str, target: &str) -> PathBuf {
    Path::new(manifest_dir)
        .join("..")
        .join("fuzz")
        .join("corpus")
        .join(target)
}

/// Runs `check` on every file of `dir` and checks each verdict against the file's name.
/// Returns the names of the seeds, sorted.
///
/// # Panics
/// When the corpus is missing, empty, lacks an `ok-` or a `bad-` seed, holds an oversized seed,
/// or when a seed's verdict is not the one its name promises (or `check` panics).
pub fn replay(dir: &Path, mut check: impl FnMut(&[u8]) -> Result<(), String>) -> Vec<String> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "seed corpus {} is unreadable ({e}); it is checked in under fuzz/corpus/",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "seed corpus {} is empty", dir.display());
    let mut names = Vec::new();
    let (mut ok, mut bad) = (0usize, 0usize);
    for path in &files {
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            data.len() <= MAX_SEED_BYTES,
            "{}: {} bytes; seeds are at most {MAX_SEED_BYTES}",
            path.display(),
            data.len()
        );
        let verdict = check(&data);
        if name.starts_with("ok-") {
            ok += 1;
            if let Err(e) = verdict {
                panic!("{}: a known-good seed was rejected: {e}", path.display());
            }
        } else if name.starts_with("bad-") {
            bad += 1;
            match verdict {
                Ok(()) => panic!("{}: a known-bad seed was accepted", path.display()),
                Err(e) => assert!(
                    !e.trim().is_empty(),
                    "{}: rejected without a message",
                    path.display()
                ),
            }
        }
        names.push(name);
    }
    assert!(
        ok > 0 && bad > 0,
        "seed corpus {} needs at least one ok- and one bad- seed (has {ok} ok, {bad} bad)",
        dir.display()
    );
    names
}
