//! The fuzz seed corpus of the cluster YAML decoder replays on stable: every file of
//! `fuzz/corpus/cluster_yaml/` (the lab's cluster, whole and one document at a time, and broken
//! documents) runs through the same one-input function as the `cargo fuzz` target; `ok-` seeds
//! decode to valid objects, `bad-` seeds are rejected with a message.

#[path = "../../fuzz/src/cluster.rs"]
pub mod cluster;
#[path = "../../fuzz/src/corpus.rs"]
pub mod corpus;

mod fuzz_corpus {
    use super::{cluster, corpus};

    #[test]
    fn cluster_yaml_seeds_decode_as_labelled() {
        let dir = corpus::dir(env!("CARGO_MANIFEST_DIR"), "cluster_yaml");
        let seeds = corpus::replay(&dir, cluster::cluster_yaml);
        assert!(
            seeds.iter().any(|s| s == "ok-lab-cluster.yaml"),
            "{seeds:?}"
        );
    }

    #[test]
    fn cluster_yaml_names_the_failing_document() {
        let e = cluster::cluster_yaml(
            b"apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n- 1\n",
        )
        .unwrap_err();
        assert!(e.starts_with("document 1: "), "{e}");
    }
}
