#![no_main]
//! `beam_node::fuzzing::record` under libFuzzer (see fuzz/README.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| beam_node::fuzzing::record(data));
