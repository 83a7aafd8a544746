//! The CA service's request messages (Join, SignWorkload, SignServing, RenewNode).
#![no_main]

use std::sync::LazyLock;

use identityd_fuzz::certs::{Fixture, ca_request};

static FIXTURE: LazyLock<Fixture> = LazyLock::new(Fixture::new);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ca_request(&FIXTURE, data);
});
