//! SPIFFE identity core for identityd.
#![forbid(unsafe_code)]
