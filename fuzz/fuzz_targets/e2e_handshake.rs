#![no_main]
//! `beam_node::fuzzing::e2e_handshake` under libFuzzer (see fuzz/README.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| beam_node::fuzzing::e2e_handshake(data));
