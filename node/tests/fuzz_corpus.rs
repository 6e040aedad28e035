//! The fuzz targets in the normal test suite: every committed corpus input (`fuzz/corpus/`),
//! then random inputs and mutations of the corpus, through the same harnesses libFuzzer runs
//! (`beam_node::fuzzing`). A target without a corpus fails here.

use std::path::PathBuf;

use beam_node::fuzzing::TARGETS;
use proptest::prelude::*;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

#[test]
fn every_corpus_input_passes_its_target() {
    for t in TARGETS {
        let inputs = corpus(t.name);
        assert!(!inputs.is_empty(), "fuzz/corpus/{} is empty", t.name);
        for input in &inputs {
            (t.run)(input);
        }
        eprintln!("{}: {} corpus inputs", t.name, inputs.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_inputs_pass_every_target(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        for t in TARGETS {
            (t.run)(&bytes);
        }
    }

    #[test]
    fn mutated_corpus_inputs_pass_their_target(
        target in 0..TARGETS.len(),
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let t = &TARGETS[target];
        let inputs = corpus(t.name);
        let mut input = inputs[pick.index(inputs.len())].clone();
        if !input.is_empty() {
            for (at, byte) in flips {
                let i = at.index(input.len());
                input[i] = byte;
            }
            (t.run)(&input);
            input.truncate(cut.index(input.len()));
        }
        (t.run)(&input);
    }
}
