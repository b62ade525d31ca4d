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

/// Restart recovery (issue 4): every golden story, run again with a `restart` (the engine
/// dropped and rebuilt from the log) before every other line, gives the same answers.
#[tokio::test]
async fn golden_scenarios_answer_the_same_across_restarts() {
    let mut failures = Vec::new();
    for input in scenario_inputs() {
        let text = std::fs::read_to_string(&input).expect("story readable");
        let expected =
            std::fs::read_to_string(expected_path(&input)).expect("expected output readable");
        let mut variant = Vec::new();
        let mut restarts = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let at = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|value| value.get("at").and_then(|at| at.as_str()).map(String::from))
                .filter(|at| ledger::clock::Timestamp::parse(at).is_ok());
            if let (Some(at), true) = (at, index % 2 == 1) {
                restarts.push(variant.len());
                variant.push(format!(r#"{{"at":"{at}","cmd":"restart"}}"#));
            }
            variant.push(line.to_string());
        }
        let output = api::scenario::run_to_string(&(variant.join("\n") + "\n"))
            .await
            .expect("story runs");
        let answers: Vec<serde_json::Value> = output
            .lines()
            .enumerate()
            .filter(|(index, _)| !restarts.contains(index))
            .map(|(_, line)| without_line_number(line))
            .collect();
        let wanted: Vec<serde_json::Value> = expected.lines().map(without_line_number).collect();
        for (number, (got, want)) in answers.iter().zip(&wanted).enumerate() {
            if got != want {
                failures.push(format!(
                    "{} line {} with restarts:\n  got:  {got}\n  want: {want}",
                    input.display(),
                    number + 1
                ));
            }
        }
        if answers.len() != wanted.len() {
            failures.push(format!("{}: line count differs", input.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "restarts changed answers:\n{}",
        failures.join("\n")
    );
}

fn without_line_number(line: &str) -> serde_json::Value {
    let mut value: serde_json::Value = serde_json::from_str(line).expect("output is JSON");
    if let Some(object) = value.as_object_mut() {
        object.remove("line");
        // Messages may quote the line number ("line 7: ..."); the code is what must agree.
        if let Some(error) = object.get_mut("error").and_then(|e| e.as_object_mut()) {
            error.remove("message");
        }
    }
    value
}
