//! Golden stories: each `tests/scenarios/NAME.jsonl` is run by `dcu scenario`'s code and its
//! output compared, line by line, with `NAME.expected.jsonl`.
//!
//! To regenerate after a deliberate change: `DCU_BLESS=1 cargo test -p dcu-tests --test
//! golden_scenarios`, then read the diff: every changed line must be explained by the change.

use dcu_tests::{expected_path, scenario_inputs};

#[tokio::test]
async fn golden_scenarios_match_their_expected_output() {
    let inputs = scenario_inputs();
    assert!(!inputs.is_empty(), "no golden stories found");
    let bless = std::env::var_os("DCU_BLESS").is_some();
    let mut failures = Vec::new();
    for input in inputs {
        let text = std::fs::read_to_string(&input).expect("story readable");
        let output = api::scenario::run_to_string(&text)
            .await
            .expect("story runs");
        assert_eq!(
            output.lines().count(),
            text.lines().count(),
            "{}: one output line per input line",
            input.display()
        );
        let expected_file = expected_path(&input);
        if bless {
            std::fs::write(&expected_file, &output).expect("expected file writable");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file)
            .unwrap_or_else(|_| panic!("missing {}", expected_file.display()));
        for (number, (got, want)) in output.lines().zip(expected.lines()).enumerate() {
            if got != want {
                failures.push(format!(
                    "{} line {}:\n  got:  {got}\n  want: {want}",
                    input.display(),
                    number + 1
                ));
            }
        }
        if output.lines().count() != expected.lines().count() {
            failures.push(format!(
                "{}: line count differs from expected",
                input.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden stories differ:\n{}",
        failures.join("\n")
    );
}
