//! The fuzz seed corpora of the certs parsers replay on stable: every file of
//! `fuzz/corpus/{spiffe_id,csr,ca_request}/` runs through the same one-input function as its
//! `cargo fuzz` target; `ok-` seeds are accepted, `bad-` seeds rejected with a message, and no
//! seed breaks a promise the fuzzer checks (round trips, issued IDs, redacted tokens).

#[path = "../../fuzz/src/certs.rs"]
pub mod certs;
#[path = "../../fuzz/src/corpus.rs"]
pub mod corpus;

mod fuzz_corpus {
    use super::{certs, corpus};

    fn dir(target: &str) -> std::path::PathBuf {
        corpus::dir(env!("CARGO_MANIFEST_DIR"), target)
    }

    #[test]
    fn spiffe_id_seeds_parse_as_labelled() {
        let seeds = corpus::replay(&dir("spiffe_id"), certs::spiffe_id);
        assert!(seeds.iter().any(|s| s == "ok-trust-domain"), "{seeds:?}");
    }

    #[test]
    fn csr_seeds_are_signed_or_refused_as_labelled() {
        let fx = certs::Fixture::new();
        let seeds = corpus::replay(&dir("csr"), |d| certs::csr(&fx, d));
        assert!(seeds.iter().any(|s| s == "ok-svid.der"), "{seeds:?}");
    }

    #[test]
    fn ca_request_seeds_are_handled_as_labelled() {
        let fx = certs::Fixture::default();
        let seeds = corpus::replay(&dir("ca_request"), |d| certs::ca_request(&fx, d));
        for rpc in ["join", "sign", "serving", "renew"] {
            assert!(
                seeds.contains(&format!("ok-{rpc}.bin")),
                "no accepted {rpc} seed in {seeds:?}"
            );
        }
    }

    #[test]
    fn empty_inputs_are_rejected_with_a_message() {
        let fx = certs::Fixture::new();
        let e = certs::ca_request(&fx, &[]).unwrap_err();
        assert!(e.contains("selector"), "{e}");
        let e = certs::csr(&fx, &[]).unwrap_err();
        assert!(e.contains("svid: ") && e.contains("serving: "), "{e}");
        let e = certs::spiffe_id(&[]).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }
}
