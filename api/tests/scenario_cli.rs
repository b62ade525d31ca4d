//! `dcu scenario` as a user runs it: hostile files, exit codes, one line out per line in.

use std::process::Command;

fn dcu() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dcu"))
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("file written");
    path
}

/// Runs scenario lines (one JSON object per line) and returns the output lines.
fn run_lines(lines: &[&str]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(dir.path(), "story.jsonl", lines.join("\n").as_bytes());
    let output = dcu().arg("scenario").arg(&file).output().expect("dcu runs");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("UTF-8 output");
    text.lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect()
}

#[test]
fn r_i5_scenario_buy_again_with_another_price_is_refused() {
    let out = run_lines(&[
        r#"{"at":"2025-04-01T00:00:00Z","cmd":"open","account":"bob"}"#,
        r#"{"at":"2025-04-01T00:00:00Z","cmd":"buy","account":"bob","plan":"trial","order":"o1","price_cny":"100000","price_reason":"campus deal"}"#,
        r#"{"at":"2025-04-01T00:00:01Z","cmd":"buy","account":"bob","plan":"trial","order":"o1","price_cny":"100000","price_reason":"campus deal"}"#,
        r#"{"at":"2025-04-01T00:00:02Z","cmd":"buy","account":"bob","plan":"trial","order":"o1","price_cny":"10","price_reason":""}"#,
        r#"{"at":"2025-04-01T00:00:03Z","cmd":"buy","account":"bob","plan":"trial","order":"o1"}"#,
    ]);
    assert_eq!(out[1]["effect"], "started", "{:?}", out[1]);
    assert_eq!(
        out[2]["effect"], "started",
        "the same line again: {:?}",
        out[2]
    );
    for line in &out[3..] {
        assert_eq!(line["error"]["code"], "invalid_request", "{line}");
    }
}

#[test]
fn r_u1_scenario_price_cny_must_be_a_plain_decimal_string() {
    let mut lines =
        vec![r#"{"at":"2025-04-01T00:00:00Z","cmd":"open","account":"bob"}"#.to_string()];
    for price in ["\"1e5\"", "\"+10\"", "\"1_0\"", "\".5\"", "10"] {
        lines.push(format!(
            r#"{{"at":"2025-04-01T00:00:00Z","cmd":"buy","account":"bob","plan":"trial","order":"o1","price_cny":{price},"price_reason":"deal"}}"#
        ));
    }
    lines.push(r#"{"at":"2025-04-01T00:00:00Z","cmd":"balance","account":"bob"}"#.into());
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let out = run_lines(&lines);
    for line in &out[1..out.len() - 1] {
        assert_eq!(line["error"]["code"], "invalid_request", "{line}");
        let message = line["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("plain decimal"), "{line}");
    }
    assert_eq!(out[out.len() - 1]["available"], "0", "nothing was bought");
}

#[test]
fn r_m11_scenario_meter_of_zero_seconds_is_refused() {
    let out = run_lines(&[
        r#"{"at":"2025-04-01T00:00:00Z","cmd":"open","account":"bob"}"#,
        r#"{"at":"2025-04-01T00:00:00Z","cmd":"meter","account":"bob","record":"r0","model":"dc100-80g","cards":1,"seconds":0}"#,
        r#"{"at":"2025-04-01T00:00:00Z","cmd":"meter","account":"bob","record":"r0","model":"dc100-80g","cards":1,"seconds":1}"#,
    ]);
    assert_eq!(out[1]["error"]["code"], "invalid_request", "{}", out[1]);
    assert_eq!(out[2]["cost"], "0.000711", "r0 was not stored: {}", out[2]);
}

#[test]
fn r_a1_scenario_open_dot_and_dot_dot_is_refused() {
    let out = run_lines(&[
        r#"{"at":"2025-04-01T00:00:00Z","cmd":"open","account":"."}"#,
        r#"{"at":"2025-04-01T00:00:00Z","cmd":"open","account":".."}"#,
    ]);
    for line in &out {
        assert_eq!(line["error"]["code"], "invalid_request", "{line}");
    }
}

#[test]
fn scenario_non_utf8_line_is_malformed_and_the_run_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(
        dir.path(),
        "bytes.jsonl",
        b"{\"at\":\"2025-04-01T00:00:00Z\",\"cmd\":\"open\",\"account\":\"a\xff\"}\r\n\
          {\"at\":\"2025-04-01T00:00:00Z\",\"cmd\":\"open\",\"account\":\"b\"}\n\
          \n\
          {\"at\":\"2025-04-01T00:00:00Z\",\"cmd\":\"balance\",\"account\":\"b\"}",
    );
    let output = dcu().arg("scenario").arg(&file).output().expect("dcu runs");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("UTF-8 output");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 4, "one output line per input line: {text}");
    assert_eq!(lines[0]["error"]["code"], "invalid_request");
    assert_eq!(lines[1]["account"], "b");
    assert_eq!(
        lines[2]["error"]["code"], "invalid_request",
        "a blank line is malformed"
    );
    assert_eq!(lines[3]["available"], "0");
    for (index, line) in lines.iter().enumerate() {
        assert_eq!(line["line"], index + 1);
    }
}

#[test]
fn scenario_unreadable_input_exits_non_zero_with_a_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    for target in [dir.path().join("missing.jsonl"), dir.path().to_path_buf()] {
        let output = dcu()
            .arg("scenario")
            .arg(&target)
            .output()
            .expect("dcu runs");
        assert!(!output.status.success(), "{} must fail", target.display());
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.contains("cannot read the scenario"), "{message}");
    }
}

#[test]
fn scenario_refuses_a_data_dir_that_already_holds_a_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(
        dir.path(),
        "open.jsonl",
        b"{\"at\":\"2025-04-01T00:00:00Z\",\"cmd\":\"open\",\"account\":\"a\"}\n",
    );
    let data = dir.path().join("data");
    let first = dcu()
        .arg("scenario")
        .arg(&file)
        .arg("--data")
        .arg(&data)
        .output();
    assert!(first.expect("dcu runs").status.success());
    let second = dcu()
        .arg("scenario")
        .arg(&file)
        .arg("--data")
        .arg(&data)
        .output();
    let second = second.expect("dcu runs");
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already holds a log"));
}
