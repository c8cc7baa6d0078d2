//! How log lines and timestamps are written: cheaply, because every request writes one of each.
//!
//! tracing-subscriber's default field formatter runs every field name, `=` and value through
//! `fmt` machinery and ANSI styling (even with colour off), and its clock formats the date
//! from scratch for each line: together about a tenth of a request's CPU. [`Fields`] writes
//! the same `name=value` layout directly, and [`Clock`] formats the date once per second.
//! [`Plain`] writes the rest of the line (level, spans, target) the same way, for a log that
//! is not a terminal; on a terminal the default layout adds its colours.
//!
//! Field values are made safe for a one-line log: strings are quoted and escaped as Rust's
//! `Debug` does, and any other value (a `%display` field, an error, the message) has its
//! control characters escaped, so no value can start a line of its own or drive a terminal.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// `YYYY-MM-DDTHH:MM:SS`: the part of a timestamp that changes once a second.
type SecondPrefix = [u8; 19];

thread_local! {
    /// The last second this thread formatted, and its prefix.
    static LAST_SECOND: Cell<(u64, SecondPrefix)> = const { Cell::new((u64::MAX, [b'0'; 19])) };
}

/// Fractional digits of a timestamp.
#[derive(Debug, Clone, Copy)]
pub enum Precision {
    Millis,
    Micros,
}

/// `t` as RFC 3339 UTC, e.g. `2026-03-02T09:15:04.123Z` (fixed width: records sort and compare
/// as strings). A time before 1970 is written as 1970's first instant.
pub fn write_utc(out: &mut impl fmt::Write, t: SystemTime, precision: Precision) -> fmt::Result {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let prefix = LAST_SECOND.with(|last| match last.get() {
        (s, prefix) if s == secs => prefix,
        _ => {
            let prefix = second_prefix(secs);
            last.set((secs, prefix));
            prefix
        }
    });
    let mut buf = [0u8; 27];
    buf[..19].copy_from_slice(&prefix);
    buf[19] = b'.';
    let (frac, digits) = match precision {
        Precision::Millis => (since.subsec_millis(), 3),
        Precision::Micros => (since.subsec_micros(), 6),
    };
    put_digits(&mut buf[20..20 + digits], frac);
    buf[20 + digits] = b'Z';
    // Digits and punctuation only, so always UTF-8.
    out.write_str(std::str::from_utf8(&buf[..21 + digits]).map_err(|_| fmt::Error)?)
}

/// [`write_utc`] into a new string.
pub fn utc(t: SystemTime, precision: Precision) -> String {
    let mut s = String::with_capacity(27);
    // Writing to a String cannot fail.
    let _ = write_utc(&mut s, t, precision);
    s
}

fn second_prefix(secs: u64) -> SecondPrefix {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut p = *b"0000-00-00T00:00:00";
    put_digits(&mut p[0..4], u32::try_from(t.year()).unwrap_or(0));
    put_digits(&mut p[5..7], u32::from(u8::from(t.month())));
    put_digits(&mut p[8..10], u32::from(t.day()));
    put_digits(&mut p[11..13], u32::from(t.hour()));
    put_digits(&mut p[14..16], u32::from(t.minute()));
    put_digits(&mut p[17..19], u32::from(t.second()));
    p
}

/// `n`'s last `out.len()` decimal digits, zero-padded.
fn put_digits(out: &mut [u8], mut n: u32) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The log's clock: RFC 3339 UTC with microseconds, as tracing-subscriber's default writes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock;

impl FormatTime for Clock {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write_utc(w, SystemTime::now(), Precision::Micros)
    }
}

/// The text log's line without colour: tracing-subscriber's default (full) layout, written
/// piece by piece instead of through `fmt`: `time level span{fields}:span{fields}: target:
/// fields`. The default formatter formats each of those pieces with `write!`: about a quarter
/// of the cost of a request's log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` record's own level and target, not the bridge's.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        Clock.format_time(&mut w)?;
        w.write_char(' ')?;
        w.write_str(match *meta.level() {
            Level::TRACE => "TRACE",
            Level::DEBUG => "DEBUG",
            Level::INFO => " INFO",
            Level::WARN => " WARN",
            Level::ERROR => "ERROR",
        })?;
        w.write_char(' ')?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                w.write_str(span.metadata().name())?;
                seen = true;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        w.write_char('{')?;
                        w.write_str(fields)?;
                        w.write_char('}')?;
                    }
                }
                w.write_char(':')?;
            }
            if seen {
                w.write_char(' ')?;
            }
        }
        w.write_str(meta.target())?;
        w.write_str(": ")?;
        ctx.format_fields(w.by_ref(), event)?;
        w.write_char('\n')
    }
}

/// The text log's field formatter: `message name=value name="text"`, separated by spaces, in
/// the order the fields were recorded (tracing-subscriber's default layout, without styling).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields;

thread_local! {
    /// Where [`Fields`] assembles a set of fields before handing it over in one write: a span's
    /// fields go into a new string of their own, which grew three times on the way to holding
    /// `request_id=...` when written piece by piece.
    static ASSEMBLY: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Longest assembly kept for the next set of fields (a longer one is freed after use).
const ASSEMBLY_KEEP: usize = 4096;

impl<'w> FormatFields<'w> for Fields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let assembled = ASSEMBLY.try_with(|cell| {
            // Busy only if a value's own formatting comes back here (tracing drops an event
            // raised inside the subscriber, so it should not): that set is written directly.
            let mut buf = cell.try_borrow_mut().ok()?;
            buf.clear();
            let result = record(&mut buf, &fields).and_then(|()| writer.write_str(&buf));
            if buf.capacity() > ASSEMBLY_KEEP {
                *buf = String::new();
            }
            Some(result)
        });
        match assembled {
            Ok(Some(result)) => result,
            _ => {
                let mut own = String::new();
                record(&mut own, &fields)?;
                writer.write_str(&own)
            }
        }
    }
}

/// The fields, written straight into a string (not through `Writer`'s dynamic calls).
fn record<R: RecordFields>(out: &mut String, fields: &R) -> fmt::Result {
    let mut line = Line {
        out,
        first: true,
        result: Ok(()),
    };
    fields.record(&mut line);
    line.result
}

struct Line<'w> {
    out: &'w mut String,
    first: bool,
    result: fmt::Result,
}

impl Line<'_> {
    /// Write one field: its separator, `name=` unless it is the message, then the value.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            // tracing-log's metadata, already in the line's head.
            return;
        }
        self.result = (|| {
            if !std::mem::replace(&mut self.first, false) {
                self.out.write_char(' ')?;
            }
            if name != "message" {
                self.out
                    .write_str(name.strip_prefix("r#").unwrap_or(name))?;
                self.out.write_char('=')?;
            }
            value(self.out)
        })();
    }
}

impl Visit for Line<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.field(field, |w| Escaped(w).write_str(value));
        } else {
            self.field(field, |w| quoted(w, value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, |w| write!(w, "{value:?}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let name = field.name();
        self.field(field, |w| {
            write!(Escaped(w), "{value}")?;
            let mut source = value.source();
            if source.is_some() {
                write!(w, " {name}.sources=[")?;
                let mut first = true;
                while let Some(s) = source {
                    if !std::mem::replace(&mut first, false) {
                        w.write_str(", ")?;
                    }
                    write!(Escaped(w), "{s}")?;
                    source = s.source();
                }
                w.write_char(']')?;
            }
            Ok(())
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| write!(Escaped(w), "{value:?}"));
    }
}

/// `s` in double quotes, escaped as `Debug` escapes it; plain text is written as it is.
fn quoted(w: &mut String, s: &str) -> fmt::Result {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        w.write_char('"')?;
        w.write_str(s)?;
        w.write_char('"')
    } else {
        write!(w, "{s:?}")
    }
}

/// A writer that escapes control characters (C0, DEL and C1) as `\n`, `\r`, `\t` or
/// `\u{..}`, so a value cannot break the line or send a terminal an escape sequence.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // C1 controls are U+0080..U+009F, whose UTF-8 starts with 0xC2.
        if !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if c.is_control() => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Log lines captured in memory, for tests that read what a subscriber wrote.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl LogBuffer {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[cfg(test)]
impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tracing_subscriber::fmt::format::{Format, Full};
    use tracing_subscriber::Registry;

    #[test]
    fn timestamps_are_rfc3339_utc_and_follow_the_clock_across_seconds() {
        let t = UNIX_EPOCH + Duration::from_micros(1_772_442_904_123_456);
        assert_eq!(utc(t, Precision::Millis), "2026-03-02T09:15:04.123Z");
        assert_eq!(utc(t, Precision::Micros), "2026-03-02T09:15:04.123456Z");
        // The cached second must not leak into the next one, nor into an earlier one.
        let next = t + Duration::from_millis(900);
        assert_eq!(utc(next, Precision::Millis), "2026-03-02T09:15:05.023Z");
        assert_eq!(
            utc(UNIX_EPOCH, Precision::Micros),
            "1970-01-01T00:00:00.000000Z"
        );
        let leap_day = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(utc(leap_day, Precision::Millis), "2024-02-29T23:59:59.000Z");
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(utc(before, Precision::Millis), "1970-01-01T00:00:00.000Z");
    }

    /// The lines a subscriber with [`Fields`] writes while `f` runs.
    fn lines(f: impl FnOnce()) -> String {
        capture(default_layout(), f)
    }

    /// tracing-subscriber's default layout without colour, with our fields and clock.
    fn default_layout() -> Format<Full, Clock> {
        tracing_subscriber::fmt::format()
            .with_timer(Clock)
            .with_ansi(false)
    }

    /// What `f` logs, at every level, through `layout` and [`Fields`].
    fn capture<E>(layout: E, f: impl FnOnce()) -> String
    where
        E: FormatEvent<Registry, Fields> + Send + Sync + 'static,
    {
        let buf = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(Fields)
            .event_format(layout)
            .with_max_level(Level::TRACE)
            .with_writer(buf.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        buf.text()
    }

    #[test]
    fn lines_keep_the_default_layout_of_spans_and_fields() {
        let text = lines(|| {
            let span = tracing::info_span!("request", request_id = %"e04ae45fe46fc1b6");
            let _in = span.enter();
            let peer: std::net::SocketAddr = "127.0.0.1:55668".parse().unwrap();
            tracing::info!(
                route = "obm",
                %peer,
                status = 200u16,
                upstream_status = 0u16,
                ok = true,
                delta = -3i64,
                most = u64::MAX,
                least = i64::MIN,
                duration_ms = 121.5f64,
                "request"
            );
        });
        let line = text.lines().next().unwrap();
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert_eq!(stamp.len(), 27, "{line}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{line}"
        );
        assert_eq!(
            rest.trim_start(),
            "INFO request{request_id=e04ae45fe46fc1b6}: obmguard::logfmt::tests: request \
             route=\"obm\" peer=127.0.0.1:55668 status=200 upstream_status=0 ok=true delta=-3 \
             most=18446744073709551615 least=-9223372036854775808 duration_ms=121.5"
        );
    }

    /// What `f` logs through the default layout without colour, and through [`Plain`], with
    /// the timestamps (the only part that differs between two runs) cut off each line.
    fn both_layouts(f: impl Fn()) -> (String, String) {
        let default = capture(default_layout(), &f);
        let plain = capture(Plain, &f);
        let untimed = |text: String| -> String {
            text.lines()
                .map(|l| {
                    let (stamp, rest) = l.split_at(27);
                    assert!(stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{l}");
                    format!("{rest}\n")
                })
                .collect()
        };
        (untimed(default), untimed(plain))
    }

    #[test]
    fn the_plain_layout_is_the_default_layout_without_colour() {
        let (default, plain) = both_layouts(|| {
            tracing::info!(route = "obm", status = 200u16, "outside any span");
            let conn = tracing::info_span!("connection", peer = %"127.0.0.1:1");
            let _c = conn.enter();
            tracing::warn!("in one span");
            let req = tracing::info_span!("request", request_id = %"e04ae45fe46fc1b6");
            let _r = req.enter();
            let bare = tracing::debug_span!("deliver");
            let _b = bare.enter();
            tracing::error!(reason = "a\"b", "in three spans, one without fields");
            tracing::debug!(n = 1u64, "debug");
            tracing::trace!("trace");
            tracing::info!(target: "elsewhere", "another target");
            // A `log` record, as pingora writes them: its own level and target, not the bridge's.
            tracing_log::format_trace(
                &tracing_log::log::Record::builder()
                    .level(tracing_log::log::Level::Warn)
                    .target("pingora_core::server")
                    .args(format_args!("from the log crate"))
                    .build(),
            )
            .unwrap();
        });
        assert_eq!(plain, default);
        assert_eq!(plain.lines().count(), 7, "{plain}");
        assert!(
            plain.contains(
                " WARN connection{peer=127.0.0.1:1}:request{request_id=e04ae45fe46fc1b6}:deliver: \
                 pingora_core::server: from the log crate\n"
            ),
            "{plain}"
        );
    }

    #[test]
    fn a_value_that_logs_while_it_is_written_keeps_its_line_whole() {
        struct Chatty;
        impl fmt::Display for Chatty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                tracing::info!(inner = 1u64, "nested");
                f.write_str("chatty")
            }
        }
        let text = lines(|| {
            let span = tracing::info_span!("request", id = %Chatty);
            let _in = span.enter();
            tracing::info!(value = %Chatty, "outer");
        });
        // (tracing drops an event raised inside the subscriber, so `nested` is not written.)
        let line = text.lines().find(|l| l.contains("outer")).unwrap();
        assert!(
            line.ends_with(" INFO request{id=chatty}: obmguard::logfmt::tests: outer value=chatty"),
            "{text}"
        );
    }

    #[test]
    fn no_value_can_break_the_line_or_reach_a_terminal() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer\nfailure")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner \u{1b}[31mred")]
        struct Inner;

        let text = lines(|| {
            let hostile = "a\"b\\c\nforged=1\u{1b}[2J\u{85}é";
            let shown = "x\r\ny\u{9b}z\u{7f}";
            let err = Outer(Inner);
            let err: &(dyn std::error::Error + 'static) = &err;
            tracing::warn!(text = hostile, %shown, error = err, "bad\nmessage\u{7}");
        });
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(
            !text.contains('\u{85}') && !text.contains('\u{9b}'),
            "{text:?}"
        );
        let fields = text.split_once(": ").unwrap().1;
        assert_eq!(
            fields.trim_end(),
            r#"bad\nmessage\u{7} text="a\"b\\c\nforged=1\u{1b}[2J\u{85}é" shown=x\r\ny\u{9b}z\u{7f} error=outer\nfailure error.sources=[inner \u{1b}[31mred]"#
        );
    }
}
