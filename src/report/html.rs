//! The migration page: the report as one self-contained HTML document, written by
//! `obmguard report --format html` and served by the admin listener at `/report`.
//!
//! What an admin reads at a glance: which outbound message actions still send a session id
//! (listed first, marked), whether the daily number is falling, and the verdict for each.
//!
//! Threat model: every value taken from the audit file (organization and action ids, routes,
//! modes, times) may have been chosen by whoever sent the message, so each one goes through
//! [`escape`] exactly once, at the point where it is written into the page, and values are
//! already cut to [`super::MAX_VALUE_CHARS`] when read. The page loads nothing (no script,
//! font, stylesheet or image from anywhere: charts are inline SVG) and says so in a
//! Content-Security-Policy, so it works offline and an injected tag could not run anyway.
//! The page holds identifiers and counts only: the audit file never holds a secret.
//!
//! Structure: the page is a list of [`Section`]s built by [`sections`]. Durable delivery (not
//! built yet) adds its queue section (depth, oldest message, dead letters) there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use time::Date;

use super::{Audit, Day, Row};
use crate::config::ranges::parse_date_prefix;

/// Days shown in the daily chart (the latest ones).
pub const CHART_DAYS: usize = 90;
/// Days in each half of the trend comparison.
pub const TREND_DAYS: i64 = 7;
/// Table cells longer than this are cut on the page.
const MAX_SHOWN_CHARS: usize = 64;

/// The Content-Security-Policy of the page: nothing may load, inline styles only.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

/// `s` safe as HTML text and as a quoted attribute value. C0 control characters other than
/// tab and newline become U+FFFD.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A value from the file, cut for display, then escaped.
fn shown(s: &str) -> String {
    let mut cut: String = s.chars().take(MAX_SHOWN_CHARS).collect();
    if s.chars().nth(MAX_SHOWN_CHARS).is_some() {
        cut.push('…');
    }
    escape(&cut)
}

/// One part of the page.
pub struct Section {
    /// The element id (also the anchor in the navigation).
    pub id: &'static str,
    pub title: &'static str,
    /// HTML, already escaped.
    pub body: String,
}

/// Whether the messages that carry a session id are going down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    /// No message with a session id in either period.
    None,
    Falling {
        before: u64,
        now: u64,
    },
    Rising {
        before: u64,
        now: u64,
    },
    Steady {
        now: u64,
    },
}

impl Trend {
    fn text(self) -> String {
        match self {
            Trend::None => format!("none in the last {} days", 2 * TREND_DAYS),
            Trend::Falling { before, now } => format!("falling ({before} → {now})"),
            Trend::Rising { before, now } => format!("rising ({before} → {now})"),
            Trend::Steady { now } => format!("steady ({now})"),
        }
    }

    fn class(self) -> &'static str {
        match self {
            Trend::None | Trend::Falling { .. } => "good",
            Trend::Rising { .. } => "bad",
            Trend::Steady { .. } => "warn",
        }
    }
}

/// Messages with a session id in the [`TREND_DAYS`] up to `last`, against the days before.
pub fn trend(daily: &BTreeMap<String, Day>, last: Option<Date>) -> Trend {
    let Some(last) = last else {
        return Trend::None;
    };
    let (mut now, mut before) = (0, 0);
    for (d, v) in daily {
        let Some(date) = parse_date_prefix(d) else {
            continue;
        };
        let age = (last - date).whole_days();
        if (0..TREND_DAYS).contains(&age) {
            now += v.with_session_id;
        } else if (TREND_DAYS..2 * TREND_DAYS).contains(&age) {
            before += v.with_session_id;
        }
    }
    match (before, now) {
        (0, 0) => Trend::None,
        (b, n) if n < b => Trend::Falling { before: b, now: n },
        (b, n) if n > b => Trend::Rising { before: b, now: n },
        (_, n) => Trend::Steady { now: n },
    }
}

/// Every day from the first to the last in `daily` (at most the last `max`), zeros filled in.
fn contiguous(daily: &BTreeMap<String, Day>, max: usize) -> Vec<(Date, Day)> {
    let dated: BTreeMap<Date, Day> = daily
        .iter()
        .filter_map(|(d, v)| Some((parse_date_prefix(d)?, *v)))
        .collect();
    let (Some((&first, _)), Some((&last, _))) = (dated.first_key_value(), dated.last_key_value())
    else {
        return Vec::new();
    };
    let span = usize::try_from((last - first).whole_days()).unwrap_or(0) + 1;
    let mut day = if span > max {
        last - time::Duration::days(max as i64 - 1)
    } else {
        first
    };
    let mut out = Vec::new();
    while day <= last {
        out.push((day, dated.get(&day).copied().unwrap_or_default()));
        match day.next_day() {
            Some(d) => day = d,
            None => break,
        }
    }
    out
}

/// The daily chart: per day, messages that still carried a session id and those refused or
/// stripped, as grouped bars.
fn chart(days: &[(Date, Day)]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 240.0;
    const LEFT: f64 = 48.0;
    const BOTTOM: f64 = 28.0;
    const TOP: f64 = 12.0;
    if days.is_empty() {
        return "<p class=\"empty\">No dated messages in the audit file yet.</p>".into();
    }
    let max = days
        .iter()
        .map(|(_, d)| d.with_session_id.max(d.refused_or_stripped))
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = W - LEFT - 8.0;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / days.len() as f64;
    let bar = (slot / 2.0 - 1.0).max(0.5);
    let y = |v: u64| TOP + plot_h - plot_h * v as f64 / max as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg id=\"daily-chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"Messages per day that still carried a session id, and those refused or stripped\">"
    );
    let _ = write!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" class=\"axis\"/><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\" class=\"axis\"/>",
        b = TOP + plot_h,
        r = W - 8.0
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{max}</text><text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">0</text>",
        LEFT - 4.0,
        TOP + 10.0,
        LEFT - 4.0,
        TOP + plot_h
    );
    for (i, (date, d)) in days.iter().enumerate() {
        let x = LEFT + slot * i as f64 + 0.5;
        for (k, (v, class, what)) in [
            (d.with_session_id, "sid", "still carried a session id"),
            (d.refused_or_stripped, "cut", "refused or stripped"),
        ]
        .into_iter()
        .enumerate()
        {
            let _ = write!(
                s,
                "<rect class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\"><title>{date}: {v} {what}</title></rect>",
                x + k as f64 * (bar + 1.0),
                y(v),
                TOP + plot_h - y(v),
            );
        }
    }
    let (first, last) = (days[0].0, days[days.len() - 1].0);
    let _ = write!(
        s,
        "<text x=\"{LEFT}\" y=\"{}\" class=\"tick\">{first}</text><text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{last}</text></svg>",
        H - 8.0,
        W - 8.0,
        H - 8.0
    );
    s
}

/// A small line of the last 30 days of messages with a session id, for one row.
fn sparkline(daily: &BTreeMap<String, Day>) -> String {
    let days = contiguous(daily, 30);
    if days.is_empty() {
        return String::new();
    }
    let max = days
        .iter()
        .map(|(_, d)| d.with_session_id)
        .max()
        .unwrap_or(0)
        .max(1);
    let step = if days.len() > 1 {
        96.0 / (days.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = days
        .iter()
        .enumerate()
        .map(|(i, (_, d))| {
            format!(
                "{:.1},{:.1}",
                2.0 + step * i as f64,
                22.0 - 20.0 * d.with_session_id as f64 / max as f64
            )
        })
        .collect();
    format!(
        "<svg class=\"spark\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 100 24\" width=\"100\" height=\"24\" role=\"img\" aria-label=\"messages with a session id per day, last {} days\"><polyline points=\"{}\"/></svg>",
        days.len(),
        points.join(" ")
    )
}

fn latest_day(daily: &BTreeMap<String, Day>) -> Option<Date> {
    daily.keys().rev().find_map(|d| parse_date_prefix(d))
}

fn list(set: &std::collections::BTreeSet<String>) -> String {
    if set.is_empty() {
        return "-".into();
    }
    set.iter().map(|v| shown(v)).collect::<Vec<_>>().join(", ")
}

/// The sections of the page, in order.
pub fn sections(audit: &Audit) -> Vec<Section> {
    let mut rows = audit.rows();
    // What still depends on session ids comes first, the busiest first.
    rows.sort_by(|a, b| {
        b.still_sends
            .cmp(&a.still_sends)
            .then(b.with_session_id.cmp(&a.with_session_id))
            .then(a.organization_id.cmp(b.organization_id))
            .then(a.action_id.cmp(b.action_id))
    });
    let daily = audit.daily();
    let last = latest_day(&daily);
    vec![
        summary_section(audit, &rows, &daily, last),
        daily_section(&daily),
        actions_section(&rows, last),
        // Durable delivery adds its queue section here.
    ]
}

fn summary_section(
    audit: &Audit,
    rows: &[Row],
    daily: &BTreeMap<String, Day>,
    last: Option<Date>,
) -> Section {
    let sending = rows.iter().filter(|r| r.still_sends).count();
    let t = trend(daily, last);
    let s = &audit.summary;
    let mut body = String::new();
    let _ = write!(
        body,
        "<dl class=\"cards\"><div class=\"card {}\"><dt>Actions still sending a session id</dt><dd id=\"actions-sending\">{sending} of {}</dd></div>",
        if sending == 0 { "good" } else { "bad" },
        rows.len()
    );
    let _ = write!(
        body,
        "<div class=\"card {}\"><dt>Messages with a session id, last {TREND_DAYS} days against the {TREND_DAYS} before</dt><dd id=\"trend\">{}</dd></div>",
        t.class(),
        escape(&t.text())
    );
    let _ = write!(
        body,
        "<div class=\"card\"><dt>Audit lines read</dt><dd id=\"lines-read\">{}</dd><dd class=\"note\">{} malformed skipped ({} too long)</dd></div></dl>",
        s.lines_read, s.malformed, s.too_long
    );
    Section {
        id: "summary",
        title: "At a glance",
        body,
    }
}

fn daily_section(daily: &BTreeMap<String, Day>) -> Section {
    let days = contiguous(daily, CHART_DAYS);
    let mut body = String::from(
        "<p class=\"legend\"><span class=\"key sid\"></span>still carried a session id <span class=\"key cut\"></span>refused or stripped by obmguard</p>",
    );
    body.push_str(&chart(&days));
    body.push_str("<details><summary>Figures</summary><table id=\"daily\"><thead><tr><th>Day</th><th>Messages</th><th>With a session id</th><th>Refused or stripped</th></tr></thead><tbody>");
    for (date, d) in days.iter().rev() {
        let _ = write!(
            body,
            "<tr><td>{date}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            d.messages, d.with_session_id, d.refused_or_stripped
        );
    }
    body.push_str("</tbody></table></details>");
    Section {
        id: "over-time",
        title: "Day by day",
        body,
    }
}

fn actions_section(rows: &[Row], last: Option<Date>) -> Section {
    let mut body = String::from(
        "<table id=\"actions\"><thead><tr><th>Organization</th><th>Outbound message action</th><th>Messages</th><th>With a session id</th><th>First seen</th><th>Last seen</th><th>Routes</th><th>Modes</th><th>Last 30 days</th><th>Trend</th><th>Verdict</th></tr></thead><tbody>",
    );
    if rows.is_empty() {
        body.push_str(
            "<tr><td colspan=\"11\" class=\"empty\">No message in the audit file yet.</td></tr>",
        );
    }
    for r in rows {
        let t = trend(r.daily, last);
        let _ = write!(
            body,
            "<tr class=\"{}\"><td class=\"org\">{}</td><td class=\"action\">{}</td><td class=\"n messages\">{}</td><td class=\"n with-session-id\">{}</td><td class=\"first-seen\">{}</td><td class=\"last-seen\">{}</td><td class=\"routes\">{}</td><td class=\"modes\">{}</td><td>{}</td><td class=\"trend {}\">{}</td><td class=\"verdict\">{}</td></tr>",
            if r.still_sends { "depends" } else { "clear" },
            shown(r.organization_id),
            shown(r.action_id),
            r.messages,
            r.with_session_id,
            shown(r.first_seen),
            shown(r.last_seen),
            list(r.routes),
            list(r.modes),
            sparkline(r.daily),
            t.class(),
            escape(&t.text()),
            escape(&r.verdict),
        );
    }
    body.push_str("</tbody></table>");
    Section {
        id: "by-action",
        title: "By organization and outbound message action",
        body,
    }
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1b1b;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#555;margin:0}nav a{margin-right:12px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:0}
.card{border:1px solid #ccc;border-left:6px solid #999;padding:8px 12px;min-width:220px}
.card dt{color:#555;font-size:12px}.card dd{margin:2px 0 0;font-size:20px;font-weight:600}
.card dd.note{font-size:12px;font-weight:400;color:#555}
.good{border-left-color:#2e7d32}.bad{border-left-color:#c62828}.warn{border-left-color:#ef6c00}
table{border-collapse:collapse;margin-top:8px}th,td{border-bottom:1px solid #e0e0e0;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.org,td.action{font-family:ui-monospace,monospace;word-break:break-all;max-width:22ch}
tr.depends td{background:#fdecea}tr.depends td.verdict{font-weight:600}
td.trend.bad{color:#c62828}td.trend.good{color:#2e7d32}td.trend.warn{color:#ef6c00}
td.verdict{max-width:48ch}
td.routes,td.modes{max-width:24ch;word-break:break-all}
svg .axis{stroke:#777}svg .tick{font-size:11px;fill:#555}
svg rect.sid,.key.sid{fill:#e65100;background:#e65100}svg rect.cut,.key.cut{fill:#1565c0;background:#1565c0}
.key{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
svg.spark polyline{fill:none;stroke:#e65100;stroke-width:1.5}
.empty{color:#777}
";

/// The whole page for `audit`, read from `source` (shown in the header), at `now`.
pub fn render(audit: &Audit, source: &str, now: SystemTime) -> String {
    let sections = sections(audit);
    let mut page = String::with_capacity(16 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\"><meta name=\"viewport\" content=\"width=device-width\"><title>obmguard: session id migration</title><style>{STYLE}</style></head><body>"
    );
    let _ = write!(
        page,
        "<header><h1>Session id migration</h1><p class=\"meta\">From the audit file <code>{}</code>, generated {} by obmguard {}.</p><nav>",
        shown(source),
        crate::audit::timestamp(now),
        env!("CARGO_PKG_VERSION")
    );
    for s in &sections {
        let _ = write!(page, "<a href=\"#{}\">{}</a>", s.id, s.title);
    }
    page.push_str("</nav></header><main>");
    for s in &sections {
        let _ = write!(
            page,
            "<section id=\"{}\"><h2>{}</h2>{}</section>",
            s.id, s.title, s.body
        );
    }
    page.push_str("</main></body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(v: &[(&str, u64)]) -> BTreeMap<String, Day> {
        v.iter()
            .map(|(d, n)| {
                (
                    d.to_string(),
                    Day {
                        messages: *n,
                        with_session_id: *n,
                        refused_or_stripped: 0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn escape_neutralises_markup_quotes_and_controls() {
        assert_eq!(
            escape("<script>alert(\"x\")</script>&'\u{1b}"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;\u{fffd}"
        );
    }

    #[test]
    fn trend_compares_the_last_week_with_the_one_before() {
        let last = parse_date_prefix("2026-03-14");
        let d = days(&[("2026-03-01", 10), ("2026-03-07", 5), ("2026-03-10", 2)]);
        assert_eq!(trend(&d, last), Trend::Falling { before: 15, now: 2 });
        let d = days(&[("2026-03-01", 1), ("2026-03-14", 4)]);
        assert_eq!(trend(&d, last), Trend::Rising { before: 1, now: 4 });
        assert_eq!(trend(&days(&[("2026-01-01", 9)]), last), Trend::None);
    }

    #[test]
    fn contiguous_fills_gaps_and_keeps_the_latest_days() {
        let d = days(&[("2026-02-27", 1), ("2026-03-02", 2), ("garbage!!!", 3)]);
        let c = contiguous(&d, 90);
        assert_eq!(c.len(), 4);
        assert_eq!(c[1].1.messages, 0);
        assert_eq!(c[3].1.messages, 2);
        let c = contiguous(&d, 2);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].0, parse_date_prefix("2026-03-01").unwrap());
    }
}
