//! Writes the fuzz targets' seed inputs (`beam_node::fuzzing::seeds`) into `DIR/<target>/`,
//! one file per input named by its SHA-256: `cargo run -p beam-node --example fuzz_seeds --
//! fuzz/corpus`. Existing files are kept; the same seeds get the same names.

use sha2::{Digest, Sha256};

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: fuzz_seeds DIR   (writes DIR/<target>/<sha256>)");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    let mut written = 0;
    for (target, input) in beam_node::fuzzing::seeds() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        let name = data_encoding::HEXLOWER.encode(&Sha256::digest(&input));
        let path = d.join(&name[..16]);
        if !path.exists() {
            std::fs::write(path, &input)?;
            written += 1;
        }
    }
    println!("{written} new seed files under {}", dir.display());
    Ok(())
}
