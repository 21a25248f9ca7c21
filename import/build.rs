//! Embeds the graph templates under `models/templates/<shape>/<precision>/` in the library,
//! so that the app carries them: `musicgen import` needs no file beside the binary.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::{env, fs};

fn main() {
    let root = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join("../models/templates");
    println!("cargo::rerun-if-changed={}", root.display());
    let mut code = String::from("pub(crate) static CARRIED: &[CarriedTemplate] = &[\n");
    // Precisions of one shape share their text encoder and codec graphs: each distinct
    // file is embedded once.
    let mut statics = String::new();
    let mut embedded: HashMap<Vec<u8>, String> = HashMap::new();
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    dirs.sort();
    for shape in dirs {
        let mut precisions: Vec<_> = fs::read_dir(&shape).unwrap().flatten().map(|e| e.path()).collect();
        precisions.sort();
        for dir in precisions.into_iter().filter(|p| p.join("template.json").is_file()) {
            println!("cargo::rerun-if-changed={}", dir.display());
            let name = format!(
                "{}/{}",
                shape.file_name().unwrap().to_string_lossy(),
                dir.file_name().unwrap().to_string_lossy()
            );
            let mut files: Vec<_> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
            files.sort();
            writeln!(code, "    CarriedTemplate {{ name: {name:?}, files: &[").unwrap();
            for file in files {
                let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
                let bytes = fs::read(&file).unwrap();
                let count = embedded.len();
                let name = embedded.entry(bytes).or_insert_with(|| {
                    let path = file.canonicalize().unwrap().display().to_string();
                    writeln!(statics, "static FILE_{count}: &[u8] = include_bytes!({path:?});").unwrap();
                    format!("FILE_{count}")
                });
                writeln!(code, "        ({file_name:?}, {name}),").unwrap();
            }
            code.push_str("    ] },\n");
        }
    }
    code.push_str("];\n");
    code.push_str(&statics);
    fs::write(Path::new(&env::var("OUT_DIR").unwrap()).join("templates.rs"), code).unwrap();
}
