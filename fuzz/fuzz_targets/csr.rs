//! CSR DER as the CA checks it: `Ca::sign_csr`, `Ca::sign_serving_csr`.
#![no_main]

use std::sync::LazyLock;

use identityd_fuzz::certs::{Fixture, csr};

static FIXTURE: LazyLock<Fixture> = LazyLock::new(Fixture::new);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = csr(&FIXTURE, data);
});
