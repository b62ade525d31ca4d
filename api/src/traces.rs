//! Readers of the public GPU cluster traces that `dcu simulate` replays
//! (`shared/data/traces/*/SOURCE.md`): Alibaba `openb` 2023 (`openb_pod_list_*.csv`) and
//! Alibaba GPU-disaggregated DLRM 2025 (`disaggregated_DLRM_trace.csv`).
//!
//! The files are plain comma-separated values without quoting. Every row is checked: a
//! wrong header, a wrong number of columns, a field that is not a number where one is
//! expected, times out of order (deleted before created, scheduled before created or after
//! deleted), or a line that is not UTF-8 is an error naming the line (1-based, the header
//! is line 1) and, where it applies, the column. Nothing here panics on input.

use std::fmt;
use std::io::{BufRead, Read};

/// Longest line read; a real line is under 200 bytes.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Largest time accepted in a trace, in seconds from its start (about 31 years).
pub const MAX_TRACE_SECONDS: f64 = 1e9;
/// Most GPUs one task may ask for.
pub const MAX_TASK_GPUS: u32 = 64;

const HEADER_2023: &[&str] = &[
    "name",
    "cpu_milli",
    "memory_mib",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "qos",
    "pod_phase",
    "creation_time",
    "deletion_time",
    "scheduled_time",
];

const HEADER_2025: &[&str] = &[
    "instance_sn",
    "role",
    "app_name",
    "cpu_request",
    "cpu_limit",
    "gpu_request",
    "gpu_limit",
    "rdma_request",
    "rdma_limit",
    "memory_request",
    "memory_limit",
    "disk_request",
    "disk_limit",
    "max_instance_per_node",
    "creation_time",
    "scheduled_time",
    "deletion_time",
];

/// The trace formats `dcu simulate` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum TraceFormat {
    /// Alibaba `openb` pod list (cluster-trace-gpu-v2023).
    #[value(name = "alibaba-2023")]
    #[serde(rename = "alibaba-2023")]
    Alibaba2023,
    /// Alibaba GPU-disaggregated DLRM trace (cluster-trace-gpu-v2025).
    #[value(name = "alibaba-2025")]
    #[serde(rename = "alibaba-2025")]
    Alibaba2025,
}

impl TraceFormat {
    pub fn header(self) -> &'static [&'static str] {
        match self {
            TraceFormat::Alibaba2023 => HEADER_2023,
            TraceFormat::Alibaba2025 => HEADER_2025,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TraceFormat::Alibaba2023 => "alibaba-2023",
            TraceFormat::Alibaba2025 => "alibaba-2025",
        }
    }
}

/// A trace that cannot be read, with the line (1-based) where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TraceError {
    pub line: usize,
    pub column: Option<&'static str>,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(column) => write!(
                formatter,
                "line {}: column {column}: {}",
                self.line, self.message
            ),
            None => write!(formatter, "line {}: {}", self.line, self.message),
        }
    }
}

/// One row of a trace, in the terms the simulation needs. Times are whole seconds from the
/// trace's start (fractions are truncated); `None` where the trace leaves the field empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// The line of the row in its file (1-based; the header is line 1).
    pub line: usize,
    /// `name` (2023) or `instance_sn` (2025).
    pub id: String,
    /// `app_name` (2025); the 2023 trace has no tenant column.
    pub tenant: Option<String>,
    /// Whole GPUs (`num_gpu`, `gpu_request`); 0 for CPU-only tasks.
    pub num_gpu: u32,
    /// Thousandths of one GPU for a shared-GPU task (2023 `gpu_milli`); 1000 = whole GPU.
    pub gpu_milli: u32,
    pub creation: Option<i64>,
    pub scheduled: Option<i64>,
    pub deletion: Option<i64>,
}

/// A whole trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub format: TraceFormat,
    pub rows: Vec<TaskRow>,
    /// The earliest and latest time in any row (0 and 0 for a trace without times).
    pub start: i64,
    pub end: i64,
}

impl Trace {
    /// Reads a trace; `format` `None` picks the format from the header.
    pub fn read(input: impl BufRead, format: Option<TraceFormat>) -> Result<Trace, TraceError> {
        read(input, format)
    }
}

fn error(line: usize, column: Option<&'static str>, message: impl Into<String>) -> TraceError {
    TraceError {
        line,
        column,
        message: message.into(),
    }
}

/// Reads the next line as text, without its end of line. `Ok(None)` at the end.
fn next_line(
    input: &mut impl BufRead,
    buffer: &mut Vec<u8>,
    line: usize,
) -> Result<Option<String>, TraceError> {
    buffer.clear();
    let mut limited = input.by_ref().take(MAX_LINE_BYTES as u64 + 1);
    let read = limited
        .read_until(b'\n', buffer)
        .map_err(|e| error(line, None, format!("cannot read: {e}")))?;
    if read == 0 {
        return Ok(None);
    }
    if buffer.len() > MAX_LINE_BYTES {
        return Err(error(
            line,
            None,
            format!("longer than {MAX_LINE_BYTES} bytes"),
        ));
    }
    while matches!(buffer.last(), Some(b'\n' | b'\r')) {
        buffer.pop();
    }
    match std::str::from_utf8(buffer) {
        Ok(text) => Ok(Some(text.to_string())),
        Err(_) => Err(error(line, None, "not UTF-8 text (is this a CSV file?)")),
    }
}

fn read(mut input: impl BufRead, format: Option<TraceFormat>) -> Result<Trace, TraceError> {
    let mut buffer = Vec::new();
    let header = next_line(&mut input, &mut buffer, 1)?
        .ok_or_else(|| error(1, None, "empty file: expected a header line"))?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let detected = [TraceFormat::Alibaba2023, TraceFormat::Alibaba2025]
        .into_iter()
        .find(|candidate| candidate.header() == columns.as_slice());
    let format = match (format, detected) {
        (Some(wanted), Some(found)) if wanted == found => wanted,
        (None, Some(found)) => found,
        (Some(wanted), _) => {
            return Err(error(
                1,
                None,
                format!(
                    "header is not the {} header: expected {:?}, found {:?}",
                    wanted.name(),
                    wanted.header().join(","),
                    shorten(&header)
                ),
            ))
        }
        (None, None) => {
            return Err(error(
                1,
                None,
                format!(
                    "header {:?} is not an alibaba-2023 or alibaba-2025 header",
                    shorten(&header)
                ),
            ))
        }
    };
    let width = format.header().len();
    let mut rows = Vec::new();
    let mut line = 1;
    while let Some(text) = next_line(&mut input, &mut buffer, line + 1)? {
        line += 1;
        let fields: Vec<&str> = text.split(',').collect();
        if fields.len() != width {
            return Err(error(
                line,
                None,
                format!(
                    "expected {width} columns, found {} (truncated or foreign line?)",
                    fields.len()
                ),
            ));
        }
        let row = match format {
            TraceFormat::Alibaba2023 => row_2023(line, &fields)?,
            TraceFormat::Alibaba2025 => row_2025(line, &fields)?,
        };
        rows.push(row);
    }
    let times = rows
        .iter()
        .flat_map(|row| [row.creation, row.scheduled, row.deletion])
        .flatten();
    let (start, end) = times
        .fold(None, |bounds: Option<(i64, i64)>, time| {
            Some(bounds.map_or((time, time), |(low, high)| (low.min(time), high.max(time))))
        })
        .unwrap_or((0, 0));
    Ok(Trace {
        format,
        rows,
        start,
        end,
    })
}

fn shorten(text: &str) -> String {
    text.chars().take(120).collect()
}

fn id_field(line: usize, column: &'static str, text: &str) -> Result<String, TraceError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(error(line, Some(column), "empty"));
    }
    Ok(text.to_string())
}

fn count_field(line: usize, column: &'static str, text: &str, max: u32) -> Result<u32, TraceError> {
    let text = text.trim();
    let value: u32 = text
        .parse()
        .map_err(|_| error(line, Some(column), format!("not a whole number: {text:?}")))?;
    if value > max {
        return Err(error(
            line,
            Some(column),
            format!("{value} is more than {max}"),
        ));
    }
    Ok(value)
}

/// A time in seconds; empty is `None`; fractions (`2676636.0`) are truncated.
fn time_field(line: usize, column: &'static str, text: &str) -> Result<Option<i64>, TraceError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let value: f64 = text
        .parse()
        .map_err(|_| error(line, Some(column), format!("not a number: {text:?}")))?;
    if !value.is_finite() || !(0.0..=MAX_TRACE_SECONDS).contains(&value) {
        return Err(error(
            line,
            Some(column),
            format!("{text:?} is not a time from 0 to {MAX_TRACE_SECONDS} s"),
        ));
    }
    // In range, so the conversion is exact after truncation.
    Ok(Some(value.trunc() as i64))
}

/// Checks that a numeric column we do not use is still a number (a foreign file with the
/// same header shape must not pass silently).
fn number_field(line: usize, column: &'static str, text: &str) -> Result<(), TraceError> {
    let text = text.trim();
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(()),
        _ => Err(error(line, Some(column), format!("not a number: {text:?}"))),
    }
}

fn row_2023(line: usize, fields: &[&str]) -> Result<TaskRow, TraceError> {
    let id = id_field(line, "name", fields[0])?;
    number_field(line, "cpu_milli", fields[1])?;
    number_field(line, "memory_mib", fields[2])?;
    let num_gpu = count_field(line, "num_gpu", fields[3], MAX_TASK_GPUS)?;
    let gpu_milli = count_field(line, "gpu_milli", fields[4], 1_000)?;
    let creation = time_field(line, "creation_time", fields[8])?;
    let deletion = time_field(line, "deletion_time", fields[9])?;
    let scheduled = time_field(line, "scheduled_time", fields[10])?;
    if creation.is_none() {
        return Err(error(line, Some("creation_time"), "empty"));
    }
    check_time_order(line, creation, scheduled, deletion)?;
    Ok(TaskRow {
        line,
        id,
        tenant: None,
        num_gpu,
        gpu_milli,
        creation,
        scheduled,
        deletion,
    })
}

fn row_2025(line: usize, fields: &[&str]) -> Result<TaskRow, TraceError> {
    let id = id_field(line, "instance_sn", fields[0])?;
    let tenant = id_field(line, "app_name", fields[2])?;
    number_field(line, "cpu_request", fields[3])?;
    let num_gpu = count_field(line, "gpu_request", fields[5], MAX_TASK_GPUS)?;
    for (index, column) in [
        (9, "memory_request"),
        (11, "disk_request"),
        (13, "max_instance_per_node"),
    ] {
        number_field(line, column, fields[index])?;
    }
    let creation = time_field(line, "creation_time", fields[14])?;
    let scheduled = time_field(line, "scheduled_time", fields[15])?;
    let deletion = time_field(line, "deletion_time", fields[16])?;
    check_time_order(line, creation, scheduled, deletion)?;
    Ok(TaskRow {
        line,
        id,
        tenant: Some(tenant),
        num_gpu,
        gpu_milli: 1_000,
        creation,
        scheduled,
        deletion,
    })
}

/// A task is created, then scheduled, then deleted: of the times a row gives (after
/// truncation to the second), none may come before an earlier step's. A row out of order
/// is refused, naming the later column (it would stretch the trace's end or give a lease
/// that ends before it starts).
fn check_time_order(
    line: usize,
    creation: Option<i64>,
    scheduled: Option<i64>,
    deletion: Option<i64>,
) -> Result<(), TraceError> {
    let out_of_order = |column, time: i64, relation: &str, other: &str, other_time: i64| {
        Err(error(
            line,
            Some(column),
            format!("{time} s is {relation} {other} {other_time} s"),
        ))
    };
    if let (Some(created), Some(deleted)) = (creation, deletion) {
        if deleted < created {
            return out_of_order("deletion_time", deleted, "before", "creation_time", created);
        }
    }
    if let (Some(created), Some(started)) = (creation, scheduled) {
        if started < created {
            return out_of_order(
                "scheduled_time",
                started,
                "before",
                "creation_time",
                created,
            );
        }
    }
    if let (Some(started), Some(deleted)) = (scheduled, deletion) {
        if started > deleted {
            return out_of_order("scheduled_time", started, "after", "deletion_time", deleted);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<Trace, TraceError> {
        Trace::read(text.as_bytes(), None)
    }

    #[test]
    fn reads_both_formats_and_names_bad_lines() -> Result<(), TraceError> {
        let head = HEADER_2023.join(",");
        let trace = read_text(&format!("{head}\np1,1,1,1,500,,LS,Running,5,9,6\n"))?;
        assert_eq!(trace.format, TraceFormat::Alibaba2023);
        assert_eq!((trace.start, trace.end), (5, 9));
        let bad = read_text(&format!("{head}\np1,1,1,1,500,,LS,Running,x,9,6\n"));
        assert_eq!(
            bad.map_err(|e| e.to_string()),
            Err("line 2: column creation_time: not a number: \"x\"".to_string())
        );
        let head = HEADER_2025.join(",");
        let trace = read_text(&format!(
            "{head}\ni0,HN,app_0,12,12,1,1,25,25,120.0,120.0,640.0,800.0,8,,,\n"
        ))?;
        assert_eq!(trace.rows[0].tenant.as_deref(), Some("app_0"));
        assert_eq!(trace.rows[0].creation, None);
        Ok(())
    }

    #[test]
    fn times_out_of_order_are_refused_naming_line_and_column() -> Result<(), TraceError> {
        let error_of = |text: String| read_text(&text).map(|_| ()).map_err(|e| e.to_string());
        let head = HEADER_2023.join(",");
        // name,...,creation_time,deletion_time,scheduled_time
        let cases_2023 = [
            (
                "p1,1,1,1,500,,LS,Running,9,5,",
                "line 3: column deletion_time: 5 s is before creation_time 9 s",
            ),
            (
                "p1,1,1,1,500,,LS,Running,9,20,8",
                "line 3: column scheduled_time: 8 s is before creation_time 9 s",
            ),
            (
                "p1,1,1,1,500,,LS,Running,9,20,987654321",
                "line 3: column scheduled_time: 987654321 s is after deletion_time 20 s",
            ),
        ];
        for (row, expected) in cases_2023 {
            let text = format!("{head}\np0,1,1,1,500,,LS,Running,5,9,6\n{row}\n");
            assert_eq!(error_of(text), Err(expected.to_string()), "{row}");
        }
        let head = HEADER_2025.join(",");
        // ...,creation_time,scheduled_time,deletion_time
        let cases_2025 = [
            (
                "i1,HN,app_0,12,12,1,1,25,25,120.0,120.0,640.0,800.0,8,100.0,,99.5",
                "line 2: column deletion_time: 99 s is before creation_time 100 s",
            ),
            (
                "i1,HN,app_0,12,12,1,1,25,25,120.0,120.0,640.0,800.0,8,,300.0,200.0",
                "line 2: column scheduled_time: 300 s is after deletion_time 200 s",
            ),
        ];
        for (row, expected) in cases_2025 {
            assert_eq!(
                error_of(format!("{head}\n{row}\n")),
                Err(expected.to_string()),
                "{row}"
            );
        }
        // Equal times, and fractions within one second, are in order.
        let trace = read_text(&format!(
            "{head}\ni1,HN,app_0,12,12,1,1,25,25,120.0,120.0,640.0,800.0,8,100.7,100.2,100.5\n"
        ))?;
        assert_eq!(trace.end, 100);
        Ok(())
    }
}
