//! `dcu statement`, `explain`, `reconcile`, `verify` and `replay --verify` as a user runs
//! them, on the manual's worked example and the invoices story (issue 6).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dcu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcu"))
        .args(args)
        .output()
        .expect("dcu runs")
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn story(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/scenarios")
        .join(format!("{name}.jsonl"));
    let output = dcu(&[
        "scenario",
        file.to_str().expect("path"),
        "--data",
        data.to_str().expect("path"),
    ]);
    assert!(output.status.success(), "{output:?}");
    (dir, data)
}

fn data_arg(data: &Path) -> &str {
    data.to_str().expect("path")
}

#[test]
fn audit_statement_of_the_worked_example_lists_every_change() {
    let (_dir, data) = story("manual_worked_example");
    let output = dcu(&[
        "statement",
        "xiaoming",
        "--data",
        data_arg(&data),
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let statement: serde_json::Value = serde_json::from_str(&text(&output)).expect("JSON");
    let kinds: Vec<&str> = statement["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|line| line["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        [
            "grant",
            "spend",
            "carry_over",
            "grant",
            "activation",
            "expiry",
            "carry_over",
            "expiry"
        ]
    );
    assert_eq!(statement["closing"]["balance"], "0");
    assert_eq!(statement["consistent"], true);

    // As of May 20 (Beijing): 66.6 = 10 carried + 56.6 basic.
    let output = dcu(&[
        "statement",
        "xiaoming",
        "--data",
        data_arg(&data),
        "--as-of",
        "2025-05-20T00:00:00+08:00",
        "--format",
        "json",
    ]);
    let statement: serde_json::Value = serde_json::from_str(&text(&output)).expect("JSON");
    assert_eq!(statement["closing"]["active"], "66.6");

    let output = dcu(&[
        "explain",
        "xiaoming",
        "--data",
        data_arg(&data),
        "--as-of",
        "2025-05-20T00:00:00+08:00",
    ]);
    assert!(output.status.success(), "{output:?}");
    let explained = text(&output);
    assert!(
        explained.contains("Bucket 2 (carry_over): 10 DCU left"),
        "{explained}"
    );
    assert!(explained.contains("order ord-0401"), "{explained}");
    assert!(explained.contains("+08:00 [2025-"), "{explained}");
}

#[test]
fn audit_reconcile_of_the_worked_example_holds_its_identity() {
    let (_dir, data) = story("manual_worked_example");
    let output = dcu(&[
        "reconcile",
        "--data",
        data_arg(&data),
        "--from",
        "2025-04-01T00:00:00+08:00",
        "--to",
        "2025-08-01T00:00:00+08:00",
    ]);
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_str(&text(&output)).expect("JSON");
    assert_eq!(report["identity_ok"], true);
    let total = &report["total"];
    assert_eq!(total["granted"], "76.6");
    assert_eq!(total["consumed"], "10");
    assert_eq!(total["expired"], "66.6");
    assert_eq!(total["revenue"]["edu_cny"], "444");
    assert_eq!(total["recognised_cny"], "444");
    assert_eq!(report["days"].as_array().expect("days").len(), 122);

    // Mid-May: the 10 carried (bought at 119/20 = 5.95 CNY per DCU) and the 56.6 of basic
    // (325 CNY) are deferred: 59.5 + 325 = 384.5 CNY.
    let output = dcu(&[
        "reconcile",
        "--data",
        data_arg(&data),
        "--from",
        "2025-04-01T00:00:00+08:00",
        "--to",
        "2025-05-20T00:00:00+08:00",
        "--format",
        "csv",
    ]);
    let csv = text(&output);
    let total = csv
        .lines()
        .find(|line| line.starts_with("total,"))
        .expect("total row");
    let fields: Vec<&str> = total.split(',').collect();
    assert_eq!(fields[9], "66.6", "closing balance: {total}");
    assert_eq!(fields[22], "384.5", "deferred at close: {total}");
    assert_eq!(fields[23], "59.5", "recognised: {total}");
}

#[test]
fn audit_reconcile_csv_neutralises_an_account_id_that_looks_like_a_formula() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("formula.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"at":"2025-04-01T00:00:00Z","cmd":"open","account":"=HYPERLINK(\"x\")"}"#,
            "\n",
            r#"{"at":"2025-04-01T00:00:00Z","cmd":"buy","account":"=HYPERLINK(\"x\")","plan":"trial","order":"o-1"}"#,
            "\n",
        ),
    )
    .expect("write");
    let data = dir.path().join("data");
    let output = dcu(&[
        "scenario",
        file.to_str().expect("path"),
        "--data",
        data_arg(&data),
    ]);
    assert!(output.status.success(), "{output:?}");
    let output = dcu(&[
        "reconcile",
        "--data",
        data_arg(&data),
        "--from",
        "2025-04-01T00:00:00Z",
        "--to",
        "2025-04-02T00:00:00Z",
        "--format",
        "csv",
    ]);
    assert!(output.status.success(), "{output:?}");
    let csv = text(&output);
    assert!(
        csv.contains("\naccount,\"'=HYPERLINK(\"\"x\"\")\",2025-04-01T00:00:00Z,"),
        "{csv}"
    );
}

#[test]
fn audit_invoices_show_in_statement_and_report() {
    let (_dir, data) = story("i6_invoices");
    let output = dcu(&[
        "reconcile",
        "--data",
        data_arg(&data),
        "--from",
        "2025-04-01T00:00:00+08:00",
        "--to",
        "2025-04-10T00:00:00+08:00",
    ]);
    let report: serde_json::Value = serde_json::from_str(&text(&output)).expect("JSON");
    let total = &report["total"];
    // xiaoming 119 + 59.5 + 119 (edu), lihua 365 + 0 (non-edu).
    assert_eq!(total["revenue"]["total_cny"], "662.5");
    assert_eq!(total["revenue"]["invoiced_cny"], "662.5");
    assert_eq!(total["invoices_recorded_cny"], "662.5");
    assert_eq!(total["not_invoiced_at_close_cny"], "0");
    let output = dcu(&["statement", "xiaoming", "--data", data_arg(&data)]);
    let statement = text(&output);
    assert!(
        statement.contains("invoice inv-1  技术服务费  178.5 CNY"),
        "{statement}"
    );
}

#[test]
fn audit_verify_finds_the_edited_event_and_replay_verifies() {
    let (_dir, data) = story("manual_worked_example");
    let output = dcu(&["verify", "--data", data_arg(&data)]);
    assert!(output.status.success(), "{output:?}");
    let output = dcu(&["replay", "--data", data_arg(&data), "--verify"]);
    assert!(output.status.success(), "{output:?}");
    assert!(text(&output).contains("verified"));

    let conn = rusqlite::Connection::open(data.join("events.db")).expect("db");
    conn.execute(
        "UPDATE events SET data = CAST(REPLACE(CAST(data AS TEXT), '28125', '28124') AS BLOB) \
         WHERE event_type = 'UsageRecorded'",
        [],
    )
    .expect("tamper");
    let position: i64 = conn
        .query_row(
            "SELECT position FROM events WHERE event_type = 'UsageRecorded'",
            [],
            |row| row.get(0),
        )
        .expect("position");
    drop(conn);
    let output = dcu(&["verify", "--data", data_arg(&data)]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains(&format!(
            "first broken event at position {position} (stream account-xiaoming, revision 2)"
        )),
        "{error}"
    );
    // Nothing else accepts the forged log either: replay --verify, migrate and serve refuse.
    let output = dcu(&["replay", "--data", data_arg(&data), "--verify"]);
    assert!(!output.status.success(), "replay --verify must fail");
    assert!(String::from_utf8_lossy(&output.stderr).contains("NOT intact"));
    let copy = data.with_file_name("copy");
    let from = format!("sqlite:{}", data_arg(&data));
    let to = format!("sqlite:{}", data_arg(&copy));
    let output = dcu(&["migrate", "--from", &from, "--to", &to]);
    assert!(!output.status.success(), "migrate must refuse");
    assert!(String::from_utf8_lossy(&output.stderr).contains("NOT intact"));
    assert!(!copy.join("events.db").exists(), "nothing copied");
    // Nor do the books: a statement, an explanation or a report of a forged log.
    for args in [
        vec!["statement", "xiaoming"],
        vec!["explain", "xiaoming", "--as-of", "2025-05-01T00:00:00Z"],
        vec![
            "reconcile",
            "--from",
            "2025-04-01T00:00:00Z",
            "--to",
            "2025-05-01T00:00:00Z",
        ],
    ] {
        let mut args = args.clone();
        args.extend(["--data", data_arg(&data)]);
        let output = dcu(&args);
        assert!(
            !output.status.success(),
            "{args:?} must refuse a forged log"
        );
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(error.contains("NOT intact"), "{args:?}: {error}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_dcu"))
        .args([
            "serve",
            "--data",
            data_arg(&data),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("DCU_ADMIN_TOKEN", "t")
        .output()
        .expect("dcu runs");
    assert!(!output.status.success(), "serve must refuse a forged log");
    assert!(String::from_utf8_lossy(&output.stderr).contains("NOT intact"));
}

#[test]
fn audit_statement_refuses_a_range_that_ends_before_it_starts() {
    let (_dir, data) = story("manual_worked_example");
    let output = dcu(&[
        "statement",
        "xiaoming",
        "--data",
        data_arg(&data),
        "--from",
        "2025-06-01T00:00:00Z",
        "--to",
        "2025-05-01T00:00:00Z",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("must be before --to"), "{stderr}");
    assert!(stderr.contains("as given"), "{stderr}");

    // Only --from, after the log's end: the message says where --to came from.
    let output = dcu(&[
        "statement",
        "xiaoming",
        "--data",
        data_arg(&data),
        "--from",
        "2030-01-01T00:00:00Z",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("by default"), "{stderr}");

    // A bad instant is named once, with what is wrong.
    let output = dcu(&[
        "statement",
        "xiaoming",
        "--data",
        data_arg(&data),
        "--from",
        "2025-13-01",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("2025-13-01").count(), 1, "{stderr}");
}
