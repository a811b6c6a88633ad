//! Embeds the workspace's `migrations/NNNN_name.sql` files, exactly as `courier-store` does, so the
//! pile-up scenario can build "the shipped migrations plus one pending `ALTER TABLE`" for
//! `Migrator::new` (the store keeps its embedded list private). Same files, same text, same checksums.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dir = manifest.join("../../migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<(i64, String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("migrations/ must exist at the workspace root") {
        let path = entry.expect("readable migrations/ entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.ends_with(".sql") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let version: i64 = name
            .split('_')
            .next()
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("migration file {name} must be named NNNN_description.sql"));
        files.push((version, name, path));
    }
    files.sort();
    let mut out = String::from("&[\n");
    for (version, name, path) in &files {
        let _ = writeln!(
            out,
            "    ({version}, {name:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    out.push(']');
    let target =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("migrations.rs");
    std::fs::write(target, out).expect("write migrations.rs");
}
