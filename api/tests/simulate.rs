//! `dcu simulate`: slices of the real traces run to completion with I1 holding, and
//! malformed trace files give errors that name the line.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use api::simulate::{self, SimulateOptions};
use api::traces::{Trace, TraceFormat};

/// Names the folder of the traces, overriding the default `<workspace root>/../shared/data/traces`.
const TRACES_DIR_ENV: &str = "DCU_TRACES_DIR";

/// The traces folder: `DCU_TRACES_DIR` if set, else `shared/` beside the project root
/// (`../shared` from the checkout, as in CI). A missing folder fails the test, naming the
/// path tried and the variable: the trace tests are never skipped silently.
fn traces_dir() -> PathBuf {
    traces_dir_from(std::env::var_os(TRACES_DIR_ENV)).unwrap_or_else(|message| panic!("{message}"))
}

fn traces_dir_from(value: Option<std::ffi::OsString>) -> Result<PathBuf, String> {
    let (dir, source) = match value {
        Some(value) if !value.is_empty() => {
            (PathBuf::from(value), format!("from {TRACES_DIR_ENV}"))
        }
        _ => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/traces"),
            format!("the default; set {TRACES_DIR_ENV} to the folder holding the traces"),
        ),
    };
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!(
            "trace folder {} not found ({source})",
            dir.display()
        ))
    }
}

const SLICE_ROWS: usize = 300;

/// The header and `rows` data lines of a trace file: every `stride`-th line from the first.
fn slice(path: &Path, rows: usize, stride: usize) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let mut lines = text.lines();
    let mut out = String::new();
    if let Some(header) = lines.next() {
        out.push_str(header);
        out.push('\n');
    }
    for line in lines.step_by(stride).take(rows) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The 2023 trace is sorted by creation time: its first rows are a slice. The first
/// thousands of 2025 rows are instances that existed before the trace began (no times at
/// all), so its slice takes every 79th row to cover the month and many apps.
const STRIDE_2023: usize = 1;
const STRIDE_2025: usize = 79;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Counts of a slice computed here, independently of the simulator: (cpu-only, never
/// started, GPU tasks that run).
fn expected_counts(text: &str, format: TraceFormat) -> (u64, u64, u64) {
    let (mut cpu, mut never, mut gpu) = (0, 0, 0);
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        match format {
            TraceFormat::Alibaba2023 => {
                if f[3] == "0" {
                    cpu += 1;
                } else if f[10].is_empty() {
                    never += 1;
                } else {
                    gpu += 1;
                }
            }
            TraceFormat::Alibaba2025 => {
                if f[5] == "0" {
                    cpu += 1;
                } else if !f[14].is_empty() && f[15].is_empty() {
                    never += 1;
                } else {
                    gpu += 1;
                }
            }
        }
    }
    (cpu, never, gpu)
}

fn run_slice(file: &str, format: TraceFormat, stride: usize) {
    let text = slice(&traces_dir().join(file), SLICE_ROWS, stride);
    let trace = Trace::read(text.as_bytes(), Some(format)).expect("the slice reads");
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SimulateOptions::default();
    let report = runtime()
        .block_on(simulate::run(&trace, &options, dir.path()))
        .expect("the simulation runs");
    assert!(report.conservation_ok, "I1 at the end: {report:#?}");
    let tasks = &report.tasks;
    let (cpu, never, gpu) = expected_counts(&text, format);
    assert_eq!(tasks.rows, SLICE_ROWS as u64);
    assert_eq!(
        (tasks.cpu_only, tasks.never_started, tasks.submitted),
        (cpu, never, gpu)
    );
    let refused: u64 = tasks.refused.values().sum();
    assert_eq!(
        tasks.granted_at_once + tasks.queued + refused,
        tasks.submitted,
        "every request has one answer"
    );
    assert!(tasks.granted >= tasks.granted_at_once);
    assert!(report.events_appended > 0);
    assert!(report.dcu.consumed.is_positive(), "{report:#?}");
}

#[test]
fn r_i1_simulate_alibaba_2023_slice() {
    run_slice(
        "alibaba-gpu-v2023/openb_pod_list_default.csv",
        TraceFormat::Alibaba2023,
        STRIDE_2023,
    );
}

#[test]
fn r_i1_simulate_alibaba_2025_slice() {
    run_slice(
        "alibaba-gpu-v2025/disaggregated_DLRM_trace.csv",
        TraceFormat::Alibaba2025,
        STRIDE_2025,
    );
}

#[test]
fn r_i1_simulate_with_heartbeats_and_a_small_pool() {
    let text = slice(
        &traces_dir().join("alibaba-gpu-v2025/disaggregated_DLRM_trace.csv"),
        100,
        STRIDE_2025,
    );
    let trace = Trace::read(text.as_bytes(), None).expect("the slice reads");
    let pool = vec![scheduler::NodeSpec {
        node: "n1".into(),
        model: "dc100-80g".into(),
        cards: 8,
    }];
    let options = SimulateOptions {
        pool: Some(pool),
        heartbeat_s: 3_600,
        ..SimulateOptions::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let report = runtime()
        .block_on(simulate::run(&trace, &options, dir.path()))
        .expect("the simulation runs");
    assert!(report.conservation_ok);
    assert_eq!(report.lease_ttl_s, 10_800);
    assert!(report.heartbeats_sent > 0, "{report:#?}");
    assert!(
        report.tasks.queued > 0,
        "8 cards for many instances: some wait"
    );
}

#[test]
fn a_missing_traces_dir_names_the_path_and_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-traces-here");
    let error = traces_dir_from(Some(missing.clone().into_os_string()))
        .expect_err("a missing folder is an error");
    assert!(error.contains(&missing.display().to_string()), "{error}");
    assert!(error.contains(TRACES_DIR_ENV), "{error}");
    let found = traces_dir_from(Some(dir.path().as_os_str().to_owned()));
    assert_eq!(
        found.as_deref(),
        Ok(dir.path()),
        "the variable overrides the default"
    );
}

fn read_error(text: &[u8]) -> String {
    match Trace::read(text, None) {
        Ok(trace) => panic!("read {} rows of a bad file", trace.rows.len()),
        Err(error) => error.to_string(),
    }
}

const HEADER_2023: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time";
const ROW_2023: &str = "openb-pod-0000,12000,16384,1,1000,,LS,Running,0,12537496,0";

#[test]
fn malformed_traces_name_the_line() {
    assert_eq!(
        read_error(b""),
        "line 1: empty file: expected a header line"
    );
    let bad_header = read_error(b"a,b,c\n1,2,3\n");
    assert!(bad_header.starts_with("line 1: header"), "{bad_header}");
    let truncated = format!("{HEADER_2023}\n{ROW_2023}\n{ROW_2023}\nopenb-pod-0002,12000,16");
    let error = read_error(truncated.as_bytes());
    assert!(
        error.starts_with("line 4: expected 11 columns, found 3"),
        "{error}"
    );
    let not_a_number = format!(
        "{HEADER_2023}\n{ROW_2023}\nopenb-pod-0001,6000,12288,1,460,,LS,Running,x,12902960,427061\n"
    );
    assert_eq!(
        read_error(not_a_number.as_bytes()),
        "line 3: column creation_time: not a number: \"x\""
    );
    let bad_gpu = format!("{HEADER_2023}\nopenb-pod-0001,6000,12288,one,460,,LS,Running,1,2,1\n");
    assert_eq!(
        read_error(bad_gpu.as_bytes()),
        "line 2: column num_gpu: not a whole number: \"one\""
    );
    let garbage: Vec<u8> = (0..4096_u32)
        .map(|i| (i * 7919 % 251) as u8 | 0x80)
        .collect();
    let error = read_error(&garbage);
    assert!(error.starts_with("line 1: "), "{error}");
    let mut binary_row = format!("{HEADER_2023}\n").into_bytes();
    binary_row.extend_from_slice(&[0xff, 0xfe, b',', 0x00, b'\n']);
    assert_eq!(
        read_error(&binary_row),
        "line 2: not UTF-8 text (is this a CSV file?)"
    );
    // A 2025 file read as 2023 is refused at its header.
    let error = match Trace::read(
        "instance_sn,role\n".as_bytes(),
        Some(TraceFormat::Alibaba2023),
    ) {
        Ok(_) => panic!("read a foreign header"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.starts_with("line 1: header is not the alibaba-2023 header"),
        "{error}"
    );
}

#[test]
fn the_cli_exits_non_zero_and_names_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.csv");
    let mut file = std::fs::File::create(&path).expect("create");
    writeln!(
        file,
        "{HEADER_2023}\n{ROW_2023}\n{ROW_2023}\nopenb-pod-9,1,1,1,1000,,LS,Running,5,zz,5"
    )
    .expect("write");
    drop(file);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dcu"))
        .args(["simulate", "--trace"])
        .arg(&path)
        .output()
        .expect("run dcu");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 4: column deletion_time: not a number: \"zz\""),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_cli_refuses_accounts_out_of_range() {
    for accounts in ["0", "-1", "1000001", "many"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_dcu"))
            .args(["simulate", "--trace", "unused.csv", "--accounts", accounts])
            .output()
            .expect("run dcu");
        assert!(!output.status.success(), "--accounts {accounts}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(accounts), "{stderr}");
    }
}
