//! Cross-crate tests of dcu-ledger: the golden scenario stories (`tests/scenarios/`) and the
//! property tests of SPEC §10. The helpers here are shared by those test files.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The folder of golden stories: `NAME.jsonl` (input) beside `NAME.expected.jsonl`.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// Every golden story's input file, sorted by name.
pub fn scenario_inputs() -> Vec<PathBuf> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| {
                    let name = path
                        .file_name()
                        .and_then(|name| name.to_str())
                        .unwrap_or("");
                    name.ends_with(".jsonl") && !name.ends_with(".expected.jsonl")
                })
                .collect()
        })
        .unwrap_or_default();
    inputs.sort();
    inputs
}

/// The expected-output file of a story.
pub fn expected_path(input: &Path) -> PathBuf {
    input.with_extension("expected.jsonl")
}
