//! Embeds the web console's built assets (`web/dist`, committed; `scripts/build-web.sh` makes
//! them) into the orchestrator: writes `$OUT_DIR/console_assets.rs`, a table of
//! `(path, include_bytes!(..))` that `src/console.rs` serves. No npm at build time; without a
//! `web/dist` the table is empty and the console answers that it was not built.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dist = manifest.join("../web/dist");
    // Cargo looks at every file under a directory named here, so a rebuilt console is embedded.
    println!("cargo:rerun-if-changed={}", dist.display());

    let mut files = Vec::new();
    if dist.is_dir() {
        collect(&dist, &dist, &mut files);
    }
    files.sort();
    let mut table = String::from("&[\n");
    for (name, path) in &files {
        let path = path.canonicalize().expect("a file just listed");
        writeln!(
            table,
            "    ({name:?}, include_bytes!({:?}) as &[u8]),",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    table.push(']');
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("console_assets.rs"), table).expect("OUT_DIR is writable");
}

/// Every file under `dir`, as (its path relative to `root` with `/` separators, its path).
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("web/dist is readable") {
            let path = entry.expect("web/dist is readable").path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                files.push((name, path));
            }
        }
    }
}
