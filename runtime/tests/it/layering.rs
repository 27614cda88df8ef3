//! Imports run one way: a module may use its own layer and the layers below it, never one
//! above. The rule and the map are in ARCHITECTURE.md ("Layers").

use std::path::Path;

/// The layers, bottom first. A top-level module of `runtime/src` not listed here fails the
/// test, so a new module has to be placed.
const LAYERS: &[&[&str]] = &[
    &["vocab", "json", "redact", "telemetry"],
    &["spec"],
    &["plan", "decide", "schedule"],
    &["journal"],
    &["store", "actions"],
    &["engine"],
    &["inspect", "worker"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The crate modules `source` refers to (`crate::x`, `$crate::x`), comments left out.
fn references(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
            rest = tail;
        }
    }
    out
}

/// Every upward reference of the files under `src`, as `file: module (layer a) -> target
/// (layer b)`.
fn violations(src: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let first = rel.components().next().expect("a component");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if module == "lib" {
                continue;
            }
            let Some(own) = layer_of(&module) else {
                found.push(format!("{}: module {module} is in no layer", rel.display()));
                continue;
            };
            let text = std::fs::read_to_string(&path).expect("read file");
            for target in references(&text) {
                if target == module {
                    continue;
                }
                match layer_of(&target) {
                    Some(l) if l > own => found.push(format!(
                        "{}: {module} (layer {own}) uses {target} (layer {l})",
                        rel.display()
                    )),
                    Some(_) => {}
                    None => found.push(format!(
                        "{}: {module} uses {target}, which is in no layer",
                        rel.display()
                    )),
                }
            }
        }
    }
    found.sort();
    found
}

#[test]
fn imports_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "imports from a layer above:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("spec")).expect("mkdir");
    std::fs::write(
        src.join("spec/mod.rs"),
        "use crate::vocab::ActionKey;\n// crate::engine in a comment is fine\nuse crate::engine::Engine;\n",
    )
    .expect("write");
    std::fs::write(src.join("vocab.rs"), "pub struct ActionKey;\n").expect("write");
    std::fs::write(src.join("mystery.rs"), "\n").expect("write");
    assert_eq!(
        violations(src),
        [
            "mystery.rs: module mystery is in no layer",
            "spec/mod.rs: spec (layer 1) uses engine (layer 5)",
        ]
    );
}
