# The two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/bin:$(HOME)/.cargo/bin:/usr/local/sbin:/usr/sbin:/sbin:$(PATH)

.PHONY: bootstrap demo test image fmt lint unit

bootstrap:
	@bash scripts/bootstrap

# The lab: a 3-node cluster on this machine, encrypted and checked (needs root).
demo: bootstrap
	@cargo build --quiet --bins
	@bash scripts/demo

# The container image the chart deploys (buildah, FROM scratch, from release binaries):
# identityd/identityd:<appVersion> in the local containers storage and
# target/image/identityd-<appVersion>.oci.tar.
image: bootstrap
	@bash scripts/image

# Everything CI checks: format, lints, the dependency policy (deny.toml: licenses, bans incl.
# duplicate versions, sources; not advisories, whose database the build machines cannot reach),
# all unit/component/e2e tests.
test: bootstrap
	cargo fmt --all --check
	cargo clippy --all-targets --locked -- -D warnings
	cargo deny --all-features check licenses bans sources
	# The image first: tests/tests/image.rs runs its binaries inside it.
	bash scripts/image
	cargo nextest run --workspace --locked --no-fail-fast -E 'not binary(lab_e2e) and not binary(lab_image_e2e)'
	# One lab for all of its named trials: nextest would run each trial in its own process.
	cargo test -p identityd --locked --test lab_e2e
	# The lab again with every daemon from the image (one lab at a time: the bridge is global).
	cargo test -p identityd --locked --test lab_image_e2e
