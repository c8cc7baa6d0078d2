//! `obmguard report --audit FILE [--format table|json|html] [--out FILE]`: what each outbound
//! message still sends, so an admin knows which route can change its SessionId mode. The same
//! HTML page is served live by the admin listener at `/report` ([`html`]).
//!
//! The audit file is streamed line by line: memory grows with the number of distinct
//! (organization, action) pairs, not with the file. Lines longer than [`MAX_LINE_BYTES`] and
//! lines that are not audit records are skipped and counted, never fatal: a report over a
//! half-written or rotated file is still useful.
//!
//! Deliberately not done: no time-window filter (pipe a slice of the file through a file or
//! `/dev/stdin`), no follow mode, and no trust in the file beyond its shape: values from it are
//! cut to [`MAX_VALUE_CHARS`] when read, printed with control characters replaced in the table
//! and escaped in the page (ids and types come from senders).

pub mod html;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longer lines are skipped and counted as malformed.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// At most this many distinct routes, modes or decisions are kept per row.
const MAX_SET: usize = 16;
/// Table cells longer than this are cut.
const MAX_CELL_CHARS: usize = 64;
/// Values read from the file are cut to this many characters (ids are 18), so a hostile file
/// cannot make each row hold megabytes.
pub const MAX_VALUE_CHARS: usize = 256;
/// Days of history kept per row (the oldest are dropped first).
pub const MAX_DAYS: usize = 400;

/// Output format of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON document: `{"pairs": [...], "summary": {...}}`.
    Json,
    /// A self-contained page (no external resource; charts as inline SVG).
    Html,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "html" => Ok(Format::Html),
            other => Err(format!("unknown format {other:?}: use table, json or html")),
        }
    }
}

/// The report could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The audit file cannot be opened.
    #[error("cannot open audit file {path}: {source}; check the path given to --audit")]
    Open {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading the audit file failed part-way.
    #[error("cannot read audit file {path}: {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing the report failed (closed pipe, full disk).
    #[error("cannot write the report: {0}")]
    Write(#[from] std::io::Error),
}

/// The fields of an audit record the report needs; others are ignored.
#[derive(Deserialize)]
struct Line {
    time: String,
    route: String,
    organization_id: Option<String>,
    action_id: Option<String>,
    session_id: String,
    #[serde(default)]
    session_action: Option<String>,
    mode: Option<String>,
    decision: String,
    /// Set on the records of a queued message's deliveries (not a message from Salesforce).
    #[serde(default)]
    attempt: Option<u32>,
}

/// One day of one row (or of the whole file).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Day {
    pub messages: u64,
    /// Messages that still carried a session id.
    pub with_session_id: u64,
    /// Messages whose session id obmguard refused, stripped or removed.
    pub refused_or_stripped: u64,
}

/// `YYYY-MM-DD` of an audit timestamp, when it looks like one.
fn day_of(time: &str) -> Option<&str> {
    let d = time.get(..10)?;
    let b = d.as_bytes();
    let ok = b.iter().enumerate().all(|(i, c)| match i {
        4 | 7 => *c == b'-',
        _ => c.is_ascii_digit(),
    });
    ok.then_some(d)
}

/// `s` cut to [`MAX_VALUE_CHARS`] characters (with a trailing `…` when cut).
fn clip(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_VALUE_CHARS) {
        s.truncate(i);
        s.push('…');
    }
    s
}

/// Everything known about one (organization, action) pair.
#[derive(Default)]
struct Pair {
    messages: u64,
    with_session_id: u64,
    first_seen: String,
    last_seen: String,
    last_with_session_id: Option<String>,
    latest_sends: bool,
    latest_mode: Option<String>,
    routes: BTreeSet<String>,
    modes: BTreeSet<String>,
    decisions: BTreeMap<String, u64>,
    daily: BTreeMap<String, Day>,
}

impl Pair {
    fn add(&mut self, line: Line) {
        let line = Line {
            time: clip(line.time),
            route: clip(line.route),
            mode: line.mode.map(clip),
            decision: clip(line.decision),
            ..line
        };
        let sends = line.session_id == "value";
        self.messages += 1;
        if let Some(d) = day_of(&line.time) {
            if !self.daily.contains_key(d) && self.daily.len() >= MAX_DAYS {
                if self
                    .daily
                    .keys()
                    .next()
                    .is_some_and(|first| first.as_str() > d)
                {
                    return self.add_totals(line, sends);
                }
                self.daily.pop_first();
            }
            let day = self.daily.entry(d.to_owned()).or_default();
            day.messages += 1;
            day.with_session_id += u64::from(sends);
            let acted = matches!(
                line.session_action.as_deref(),
                Some("stripped" | "removed" | "rejected")
            );
            day.refused_or_stripped += u64::from(acted);
        }
        self.add_totals(line, sends);
    }

    fn add_totals(&mut self, line: Line, sends: bool) {
        if sends {
            self.with_session_id += 1;
            if self
                .last_with_session_id
                .as_ref()
                .is_none_or(|t| *t < line.time)
            {
                self.last_with_session_id = Some(line.time.clone());
            }
        }
        if self.first_seen.is_empty() || line.time < self.first_seen {
            self.first_seen = line.time.clone();
        }
        if line.time >= self.last_seen {
            self.latest_sends = sends;
            self.latest_mode = line.mode.clone();
            self.last_seen = line.time;
        }
        insert_bounded(&mut self.routes, line.route);
        if let Some(mode) = line.mode {
            insert_bounded(&mut self.modes, mode);
        }
        self.add_decision(line.decision);
    }

    fn add_decision(&mut self, decision: String) {
        if let Some(n) = self.decisions.get_mut(&decision) {
            *n += 1;
        } else if self.decisions.len() < MAX_SET {
            self.decisions.insert(decision, 1);
        }
    }

    /// What the admin should do, judged on the latest message and the route's mode then.
    fn verdict(&self, action: &str) -> String {
        let mode = self.latest_mode.as_deref().unwrap_or("");
        if mode == "inject" {
            return "tokens injected: receiver callbacks use obmguard's OAuth token".into();
        }
        if self.latest_sends {
            return match mode {
                "reject" => format!(
                    "messages refused: untick 'Send Session ID' on the outbound message {action}"
                ),
                "strip" | "remove" => "session ids are being removed: the receiver can no longer call back; use inject if it needs to".into(),
                _ => "still sends a session id: switch this route to inject before relying on the receiver's callbacks (or strip if the receiver does not call back)".into(),
            };
        }
        let since = self
            .last_with_session_id
            .as_deref()
            .unwrap_or(&self.first_seen);
        match mode {
            "strip" | "remove" => format!("no session id seen since {since}: nothing to do"),
            _ => format!("no session id seen since {since}: safe to move to strip"),
        }
    }
}

fn insert_bounded(set: &mut BTreeSet<String>, value: String) {
    if set.len() < MAX_SET || set.contains(&value) {
        set.insert(value);
    }
}

/// One row of the report: an (organization, action) pair.
#[derive(Serialize)]
pub struct Row<'a> {
    pub organization_id: &'a str,
    pub action_id: &'a str,
    pub messages: u64,
    pub with_session_id: u64,
    pub first_seen: &'a str,
    pub last_seen: &'a str,
    pub last_session_id_seen: Option<&'a str>,
    pub routes: &'a BTreeSet<String>,
    pub modes: &'a BTreeSet<String>,
    pub decisions: &'a BTreeMap<String, u64>,
    pub verdict: String,
    /// Whether the latest message still carried a session id.
    pub still_sends: bool,
    #[serde(skip)]
    pub daily: &'a BTreeMap<String, Day>,
}

/// Counts over the whole file.
#[derive(Serialize, Default, Debug, PartialEq)]
pub struct Summary {
    pub lines_read: u64,
    pub malformed: u64,
    /// Of the malformed lines, those longer than [`MAX_LINE_BYTES`].
    pub too_long: u64,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    pairs: Vec<Row<'a>>,
    summary: &'a Summary,
}

/// Everything read from one audit file; [`Audit::rows`] gives the report's rows.
pub struct Audit {
    pairs: Pairs,
    pub summary: Summary,
}

impl Audit {
    /// Read and aggregate the audit file at `path` (streamed; see the module doc).
    pub fn read(path: &Path) -> Result<Audit, ReportError> {
        let file = File::open(path).map_err(|source| ReportError::Open {
            path: path.to_owned(),
            source,
        })?;
        let (pairs, summary) =
            aggregate(BufReader::with_capacity(64 * 1024, file)).map_err(|source| {
                ReportError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?;
        Ok(Audit { pairs, summary })
    }

    /// One row per (organization, action), sorted by organization then action.
    pub fn rows(&self) -> Vec<Row<'_>> {
        rows(&self.pairs)
    }

    /// Every row's days added up.
    pub fn daily(&self) -> BTreeMap<String, Day> {
        let mut all: BTreeMap<String, Day> = BTreeMap::new();
        for p in self.pairs.values() {
            for (d, v) in &p.daily {
                let t = all.entry(d.clone()).or_default();
                t.messages += v.messages;
                t.with_session_id += v.with_session_id;
                t.refused_or_stripped += v.refused_or_stripped;
            }
        }
        all
    }
}

/// Read the audit file at `path` and write the report to `out`.
pub fn run(path: &Path, format: Format, out: &mut impl Write) -> Result<(), ReportError> {
    let audit = Audit::read(path)?;
    if format == Format::Html {
        let page = html::render(
            &audit,
            &path.display().to_string(),
            std::time::SystemTime::now(),
        );
        out.write_all(page.as_bytes())?;
        out.flush()?;
        return Ok(());
    }
    let summary = &audit.summary;
    let rows = audit.rows();
    match format {
        Format::Json => {
            let report = JsonReport {
                pairs: rows,
                summary,
            };
            serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Format::Table | Format::Html => write_table(&rows, summary, out)?,
    }
    out.flush()?;
    Ok(())
}

fn rows(pairs: &Pairs) -> Vec<Row<'_>> {
    pairs
        .iter()
        .map(|((org, action), p)| Row {
            organization_id: org,
            action_id: action,
            messages: p.messages,
            with_session_id: p.with_session_id,
            first_seen: &p.first_seen,
            last_seen: &p.last_seen,
            last_session_id_seen: p.last_with_session_id.as_deref(),
            routes: &p.routes,
            modes: &p.modes,
            decisions: &p.decisions,
            verdict: p.verdict(action),
            still_sends: p.latest_sends,
            daily: &p.daily,
        })
        .collect()
}

type Pairs = BTreeMap<(String, String), Pair>;

fn aggregate(mut reader: impl BufRead) -> std::io::Result<(Pairs, Summary)> {
    let mut pairs = Pairs::new();
    let mut summary = Summary::default();
    let mut buf = Vec::new();
    loop {
        let read = read_bounded_line(&mut reader, &mut buf, MAX_LINE_BYTES)?;
        if read == LineRead::Eof {
            break;
        }
        summary.lines_read += 1;
        if read == LineRead::TooLong {
            summary.malformed += 1;
            summary.too_long += 1;
            continue;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Line>(&buf) {
            Ok(line) => {
                let key = (
                    clip(line.organization_id.clone().unwrap_or_else(|| "-".into())),
                    clip(line.action_id.clone().unwrap_or_else(|| "-".into())),
                );
                let pair = pairs.entry(key).or_default();
                if line.attempt.is_some() {
                    // A delivery of a message counted when it was accepted: its outcome only.
                    pair.add_decision(clip(line.decision));
                } else {
                    pair.add(line);
                }
            }
            Err(_) => summary.malformed += 1,
        }
    }
    Ok((pairs, summary))
}

#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    Line,
    TooLong,
    Eof,
}

/// Read one line (without its `\n`) into `buf`, keeping at most `max` bytes: a longer line is
/// consumed to its end and reported as [`LineRead::TooLong`] without being buffered.
fn read_bounded_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut too_long = false;
    let mut started = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(match (started, too_long) {
                (false, _) => LineRead::Eof,
                (true, true) => LineRead::TooLong,
                (true, false) => LineRead::Line,
            });
        }
        started = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let (content, _) = available.split_at(newline.unwrap_or(available.len()));
        if !too_long {
            if buf.len() + content.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(content);
            }
        }
        let used = content.len() + usize::from(newline.is_some());
        reader.consume(used);
        if newline.is_some() {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

/// A value from the file, safe for a terminal: control characters replaced, length capped.
fn cell(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_CELL_CHARS).map(printable).collect();
    if s.chars().nth(MAX_CELL_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn printable(c: char) -> char {
    if c.is_control() {
        '?'
    } else {
        c
    }
}

fn join(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "-".into()
    } else {
        set.iter().map(String::as_str).collect::<Vec<_>>().join(",")
    }
}

fn write_table(rows: &[Row], summary: &Summary, out: &mut impl Write) -> std::io::Result<()> {
    const HEADER: [&str; 8] = [
        "ORGANIZATION",
        "ACTION",
        "MESSAGES",
        "WITH SESSION ID",
        "FIRST SEEN",
        "LAST SEEN",
        "ROUTES/MODES",
        "VERDICT",
    ];
    let body: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                cell(r.organization_id),
                cell(r.action_id),
                r.messages.to_string(),
                r.with_session_id.to_string(),
                cell(r.first_seen),
                cell(r.last_seen),
                cell(&format!("{}/{}", join(r.routes), join(r.modes))),
                // Ours, but it embeds an id from the file.
                r.verdict.chars().map(printable).collect(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let header = HEADER.map(String::from);
    for row in std::iter::once(&header).chain(&body) {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            match i {
                2 | 3 => line.push_str(&format!("{c:>w$}  ")),
                7 => line.push_str(c),
                _ => line.push_str(&format!("{c:<w$}  ")),
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(
        out,
        "\n{} lines read, {} malformed skipped ({} longer than {} KiB)",
        summary.lines_read,
        summary.malformed,
        summary.too_long,
        MAX_LINE_BYTES / 1024
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditRecord, SessionIdSeen};
    use std::io::BufWriter;

    const ORG: &str = "00D5e000000AbCdEAK";

    fn rec(time: &str, action: &str, route: &str, mode: &str, sid: SessionIdSeen) -> String {
        let r = AuditRecord {
            time: time.into(),
            request_id: "req".into(),
            route: route.into(),
            peer: "203.0.113.7:51234".into(),
            client_ip: "203.0.113.7".into(),
            vpce_id: None,
            client_cert_sha256: None,
            client_cert_subject: None,
            organization_id: Some(ORG.into()),
            action_id: Some(action.into()),
            notification_ids: vec!["04l5e00000AbCdEAAV".into()],
            sobject_types: vec!["Account".into()],
            session_id: sid,
            session_action: None,
            mode: Some(mode.into()),
            decision: if mode == "reject" && sid == SessionIdSeen::Value {
                "rejected".into()
            } else {
                "acked".into()
            },
            reason: None,
            upstream_status: Some(200),
            ack: Some(true),
            duration_ms: 3.0,
            upstream_ms: Some(2.0),
            message_id: None,
            attempt: None,
        };
        serde_json::to_string(&r).unwrap()
    }

    fn prepared_file() -> tempfile::NamedTempFile {
        use SessionIdSeen::*;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let lines = [
            rec(
                "2026-03-01T10:00:00.000Z",
                "AUDIT",
                "orders",
                "audit",
                Value,
            ),
            rec(
                "2026-03-01T11:00:00.000Z",
                "AUDIT",
                "orders",
                "audit",
                Value,
            ),
            rec(
                "2026-03-01T10:00:00.000Z",
                "STRIP",
                "billing",
                "strip",
                Value,
            ),
            rec(
                "2026-03-01T10:00:00.000Z",
                "INJECT",
                "legacy",
                "inject",
                Value,
            ),
            rec(
                "2026-03-01T10:00:00.000Z",
                "REJECT",
                "strict",
                "reject",
                Value,
            ),
            rec("2026-02-20T10:00:00.000Z", "CLEAN", "quiet", "audit", Value),
            rec("2026-03-01T09:00:00.000Z", "CLEAN", "quiet", "audit", Nil),
            rec("2026-03-01T12:00:00.000Z", "CLEAN", "quiet2", "strip", Nil),
            rec(
                "2026-03-02T08:00:00.000Z",
                "NEVER",
                "quiet",
                "audit",
                Absent,
            ),
            "{not json".to_string(),
            r#"{"time":"2026-03-01T10:00:00.000Z"}"#.to_string(),
            format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_LINE_BYTES + 10)),
            String::new(),
            rec(
                "2026-03-01T12:30:00.000Z",
                "AUDIT",
                "orders",
                "audit",
                Value,
            )
            .replacen('{', r#"{"added_in_a_later_version":[1,2],"#, 1),
        ];
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        // A last line cut short by a crash: no newline, not JSON.
        write!(f, r#"{{"time":"2026-03-0"#).unwrap();
        f.flush().unwrap();
        f
    }

    fn json_report(path: &Path) -> serde_json::Value {
        let mut out = Vec::new();
        run(path, Format::Json, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    fn pair<'a>(report: &'a serde_json::Value, action: &str) -> &'a serde_json::Value {
        report["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["action_id"] == action)
            .unwrap()
    }

    #[test]
    fn counts_malformed_and_over_long_lines_without_failing() {
        let f = prepared_file();
        let report = json_report(f.path());
        assert_eq!(report["summary"]["lines_read"], 15);
        assert_eq!(report["summary"]["malformed"], 4);
        assert_eq!(report["summary"]["too_long"], 1);
        assert_eq!(report["pairs"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn aggregates_per_organization_and_action() {
        let f = prepared_file();
        let report = json_report(f.path());
        let audit = pair(&report, "AUDIT");
        assert_eq!(audit["organization_id"], ORG);
        assert_eq!(audit["messages"], 3);
        assert_eq!(audit["with_session_id"], 3);
        assert_eq!(audit["first_seen"], "2026-03-01T10:00:00.000Z");
        assert_eq!(audit["last_seen"], "2026-03-01T12:30:00.000Z");
        assert_eq!(audit["decisions"]["acked"], 3);
        let clean = pair(&report, "CLEAN");
        assert_eq!(clean["messages"], 3);
        assert_eq!(clean["with_session_id"], 1);
        assert_eq!(clean["routes"], serde_json::json!(["quiet", "quiet2"]));
        assert_eq!(clean["modes"], serde_json::json!(["audit", "strip"]));
        assert_eq!(pair(&report, "REJECT")["decisions"]["rejected"], 1);
    }

    #[test]
    fn verdicts_tell_the_admin_what_to_do() {
        let f = prepared_file();
        let report = json_report(f.path());
        let verdict = |a: &str| pair(&report, a)["verdict"].as_str().unwrap().to_owned();
        assert!(
            verdict("AUDIT").starts_with("still sends a session id: switch this route to inject")
        );
        assert!(verdict("STRIP").starts_with("session ids are being removed"));
        assert!(verdict("INJECT").starts_with("tokens injected"));
        assert_eq!(
            verdict("REJECT"),
            "messages refused: untick 'Send Session ID' on the outbound message REJECT"
        );
        assert_eq!(
            verdict("CLEAN"),
            "no session id seen since 2026-02-20T10:00:00.000Z: nothing to do"
        );
        assert_eq!(
            verdict("NEVER"),
            "no session id seen since 2026-03-02T08:00:00.000Z: safe to move to strip"
        );
    }

    #[test]
    fn table_has_aligned_columns_and_a_summary() {
        let f = prepared_file();
        let mut out = Vec::new();
        run(f.path(), Format::Table, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ORGANIZATION"));
        let verdict_at = lines[0].find("VERDICT").unwrap();
        let rows: Vec<&&str> = lines.iter().skip(1).take_while(|l| !l.is_empty()).collect();
        assert_eq!(rows.len(), 6);
        for row in rows {
            assert!(row.starts_with(ORG), "{row}");
            let verdict = row.get(verdict_at..).unwrap();
            assert!(
                ["still", "session", "tokens", "messages", "no "]
                    .iter()
                    .any(|v| verdict.starts_with(v)),
                "verdict column misaligned: {row}"
            );
        }
        assert!(text.contains("orders/audit"));
        assert!(text.contains("15 lines read, 4 malformed skipped (1 longer than"));
    }

    #[test]
    fn table_replaces_control_characters_from_the_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let line = rec(
            "2026-03-01T10:00:00.000Z",
            "A\u{1b}[2J",
            "r",
            "audit",
            SessionIdSeen::Nil,
        );
        writeln!(f, "{line}").unwrap();
        let mut out = Vec::new();
        run(f.path(), Format::Table, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\u{1b}'));
        assert!(text.contains("A?[2J"));
    }

    #[test]
    fn streams_a_large_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let templates: Vec<String> = (0..50)
            .map(|i| {
                let sid = if i % 2 == 0 {
                    SessionIdSeen::Value
                } else {
                    SessionIdSeen::Nil
                };
                rec(
                    "2026-03-01T10:00:00.000Z",
                    &format!("ACT{i:02}"),
                    "orders",
                    "audit",
                    sid,
                )
            })
            .collect();
        let mut w = BufWriter::new(f.reopen().unwrap());
        for n in 0..200_000 {
            writeln!(w, "{}", templates[n % templates.len()]).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        let report = json_report(f.path());
        assert_eq!(report["summary"]["lines_read"], 200_000);
        assert_eq!(report["summary"]["malformed"], 0);
        let pairs = report["pairs"].as_array().unwrap();
        assert_eq!(pairs.len(), 50);
        assert!(pairs.iter().all(|p| p["messages"] == 4_000));
        assert_eq!(pair(&report, "ACT00")["with_session_id"], 4_000);
        assert_eq!(pair(&report, "ACT01")["with_session_id"], 0);
    }

    #[test]
    fn bounded_reader_skips_long_lines_and_keeps_the_next() {
        let data = b"abc\ntoolongline\nxy";
        // A 4-byte buffer forces lines to span several fill_buf calls.
        let mut r = BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"abc");
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            LineRead::TooLong
        );
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"xy");
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 5).unwrap(),
            LineRead::Eof
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.jsonl");
        let err = run(&path, Format::Table, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ReportError::Open { .. }));
        assert!(err.to_string().contains("nope.jsonl"));
    }

    #[test]
    fn format_parses_table_and_json_only() {
        assert_eq!("table".parse::<Format>(), Ok(Format::Table));
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert_eq!("html".parse::<Format>(), Ok(Format::Html));
        assert!("csv"
            .parse::<Format>()
            .unwrap_err()
            .contains("table, json or html"));
    }
}
