//! The fuzz seed corpus of the UAPI `set=1` parser replays on stable: every file of
//! `fuzz/corpus/wg_uapi/` runs through the same one-input function as the `cargo fuzz` target;
//! `ok-` seeds parse and apply, `bad-` seeds are rejected with a message that names the line
//! and never echoes key material.

#[path = "../../fuzz/src/corpus.rs"]
pub mod corpus;
#[path = "../../fuzz/src/wg.rs"]
pub mod wg;

mod fuzz_corpus {
    use super::{corpus, wg};

    #[test]
    fn wg_uapi_seeds_parse_as_labelled() {
        let dir = corpus::dir(env!("CARGO_MANIFEST_DIR"), "wg_uapi");
        let seeds = corpus::replay(&dir, wg::wg_uapi);
        assert!(seeds.iter().any(|s| s == "ok-device.txt"), "{seeds:?}");
    }

    #[test]
    fn wg_uapi_rejection_redacts_the_private_key() {
        let key = "5b".repeat(31);
        let e = wg::wg_uapi(format!("private_key={key}zz\n").as_bytes()).unwrap_err();
        assert!(e.contains("private_key=<redacted>"), "{e}");
        assert!(!e.contains(&key), "{e}");
    }
}
