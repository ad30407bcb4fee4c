//! Five-field cron expressions evaluated in an IANA time zone, and interval arithmetic.
//!
//! Syntax: `minute hour day-of-month month day-of-week`, each field a comma list of `*`, `N`,
//! `A-B`, with an optional `/STEP` (`*/15`, `1-30/2`, `5/10` = `5-max/10`); months `JAN`–`DEC`
//! and weekdays `SUN`–`SAT` by name (any case); weekday `7` is Sunday; `?` means `*` in the two
//! day fields. Macros: `@yearly` `@annually` `@monthly` `@weekly` `@daily` `@midnight`
//! `@hourly`. Day matching follows Vixie cron: when both day fields are restricted (neither
//! starts with `*` or `?`) a day matches if *either* matches; otherwise both must.
//!
//! Daylight saving time, decided here once:
//! * A local time that does not exist (skipped by a spring-forward gap) fires at the first
//!   valid instant after the gap, i.e. the transition itself (`02:30` on the New York change
//!   day fires at `03:00` EDT). Several skipped matches collapse into that one firing.
//! * A local time that happens twice (fall-back fold) fires once, at its first occurrence.
//!   The repeated hour does not fire again, so an hourly job sees a two-hour gap that night.
//!
//! Time zones come from jiff's bundled tz database, so a container without
//! `/usr/share/zoneinfo` computes the same instants as any other machine.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;
use std::fmt;

/// How far ahead the next occurrence is searched. Covers `0 0 29 2 *` around a skipped
/// leap year (2096 → 2104).
pub const SEARCH_YEARS: i16 = 9;
/// Milliseconds per minute.
pub const MINUTE_MS: i64 = 60_000;

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A parsed cron expression: one bit set per allowed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday = 0.
    weekdays: u8,
    /// The day-of-month field starts with `*` or `?`.
    days_star: bool,
    /// The day-of-week field starts with `*` or `?`.
    weekdays_star: bool,
}

/// Why an expression was rejected. `Display` is the client-facing text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError {
    pub expression: String,
    pub reason: String,
}

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Invalid cron expression \"{}\": {}",
            self.expression, self.reason
        )
    }
}

impl std::error::Error for CronError {}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// First value that `names[0]` stands for.
    names_base: u32,
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_base: 0,
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_base: 0,
};
const DAY: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    names_base: 0,
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &MONTH_NAMES,
    names_base: 1,
};
/// 7 is accepted as Sunday and folded onto 0 after parsing.
const WEEKDAY: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &WEEKDAY_NAMES,
    names_base: 0,
};

fn expand_macro(expr: &str) -> Option<&'static str> {
    Some(match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

impl Cron {
    /// Parses an expression (surrounding whitespace ignored).
    pub fn parse(expression: &str) -> Result<Cron, CronError> {
        let err = |reason: String| CronError {
            expression: expression.to_string(),
            reason,
        };
        let trimmed = expression.trim();
        let body = if trimmed.starts_with('@') {
            expand_macro(trimmed).ok_or_else(|| {
                err(format!(
                    "unknown macro {trimmed} (supported: @yearly, @annually, @monthly, \
                     @weekly, @daily, @midnight, @hourly)"
                ))
            })?
        } else {
            trimmed
        };
        let fields: Vec<&str> = body.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                fields.len()
            )));
        }
        let minutes = parse_field(fields[0], &MINUTE).map_err(err)?;
        let hours = parse_field(fields[1], &HOUR).map_err(err)?;
        let days = parse_field(fields[2], &DAY).map_err(err)?;
        let months = parse_field(fields[3], &MONTH).map_err(err)?;
        let mut weekdays = parse_field(fields[4], &WEEKDAY).map_err(err)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let is_star = |f: &str| f.starts_with('*') || f.starts_with('?');
        Ok(Cron {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_star: is_star(fields[2]),
            weekdays_star: is_star(fields[4]),
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first local minute at or after `start` (seconds ignored) that matches, searching
    /// up to [`SEARCH_YEARS`] ahead.
    pub fn next_local(&self, start: DateTime) -> Option<DateTime> {
        let limit = start.year().saturating_add(SEARCH_YEARS);
        let (mut y, mut mo, mut d) = (start.year(), start.month(), start.day());
        let (mut h, mut mi) = (start.hour(), start.minute());
        loop {
            if y > limit {
                return None;
            }
            if self.months & (1 << mo) == 0 {
                (y, mo) = next_month(y, mo);
                (d, h, mi) = (1, 0, 0);
                continue;
            }
            let date = Date::new(y, mo, d).ok()?;
            if !self.day_matches(date) {
                if d >= date.days_in_month() {
                    (y, mo) = next_month(y, mo);
                    d = 1;
                } else {
                    d += 1;
                }
                (h, mi) = (0, 0);
                continue;
            }
            let Some(hour) = next_bit(self.hours as u64, h as u32, 23) else {
                if d >= date.days_in_month() {
                    (y, mo) = next_month(y, mo);
                    d = 1;
                } else {
                    d += 1;
                }
                (h, mi) = (0, 0);
                continue;
            };
            if hour as i8 != h {
                (h, mi) = (hour as i8, 0);
            }
            let Some(minute) = next_bit(self.minutes, mi as u32, 59) else {
                (h, mi) = (h + 1, 0);
                if h > 23 {
                    if d >= date.days_in_month() {
                        (y, mo) = next_month(y, mo);
                        d = 1;
                    } else {
                        d += 1;
                    }
                    h = 0;
                }
                continue;
            };
            let time = Time::new(h, minute as i8, 0, 0).ok()?;
            return Some(date.to_datetime(time));
        }
    }

    /// The first instant strictly after `after_ms` at which this expression fires in `tz`,
    /// with the DST rules of this module. `None` when nothing matches within
    /// [`SEARCH_YEARS`].
    pub fn next_after(&self, tz: &TimeZone, after_ms: i64) -> Option<i64> {
        let after = Timestamp::from_millisecond(after_ms).ok()?;
        let local = tz.to_datetime(after);
        let mut start = local
            .date()
            .to_datetime(Time::new(local.hour(), local.minute(), 0, 0).ok()?);
        // Local minutes map to instants monotonically (first occurrence in a fold, the
        // transition in a gap), so the first match whose instant is past `after` is the
        // answer. Matches before it are the already-fired first pass of a fold or a gap that
        // collapsed onto an instant already fired: at most one fold's worth of minutes.
        for _ in 0..(24 * 60 * 2) {
            let candidate = self.next_local(start)?;
            let at = local_to_instant(tz, candidate)?;
            if at > after_ms {
                return Some(at);
            }
            start = candidate
                .checked_add(jiff::SignedDuration::from_mins(1))
                .ok()?;
        }
        None
    }
}

fn next_month(y: i16, mo: i8) -> (i16, i8) {
    if mo >= 12 {
        (y + 1, 1)
    } else {
        (y, mo + 1)
    }
}

/// The lowest set bit at or above `from` and at most `max`.
fn next_bit(bits: u64, from: u32, max: u32) -> Option<u32> {
    (from..=max).find(|b| bits & (1 << b) != 0)
}

/// A local wall-clock minute as an instant (ms): the first occurrence in a fold, the
/// transition instant in a gap.
pub fn local_to_instant(tz: &TimeZone, dt: DateTime) -> Option<i64> {
    let ts = match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok()?,
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok()?,
        AmbiguousOffset::Gap { before, after } => {
            // With the post-gap offset the wall time lands before the transition; the next
            // transition from there is the end of the gap.
            let early = after.to_timestamp(dt).ok()?;
            match tz.following(early).next() {
                Some(t) => t.timestamp(),
                None => before.to_timestamp(dt).ok()?,
            }
        }
    };
    Some(ts.as_millisecond())
}

fn parse_field(text: &str, spec: &FieldSpec) -> Result<u64, String> {
    if text.is_empty() {
        return Err(format!("empty {} field", spec.name));
    }
    let mut bits = 0u64;
    for item in text.split(',') {
        bits |= parse_item(item, spec)?;
    }
    Ok(bits)
}

fn parse_item(item: &str, spec: &FieldSpec) -> Result<u64, String> {
    let name = spec.name;
    if item.is_empty() {
        return Err(format!("empty list item in {name} field"));
    }
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => {
            let step: u32 =
                parse_number(s).ok_or_else(|| format!("invalid step \"{s}\" in {name} field"))?;
            if step == 0 || step > spec.max {
                return Err(format!(
                    "step {step} out of range 1-{} in {name} field",
                    spec.max
                ));
            }
            (r, Some(step))
        }
        None => (item, None),
    };
    let day_field = spec.name == DAY.name || spec.name == WEEKDAY.name;
    let (lo, hi) = if range == "*" || (range == "?" && day_field) {
        (spec.min, spec.max)
    } else if let Some((a, b)) = range.split_once('-') {
        let lo = parse_value(a, spec)?;
        let hi = parse_value(b, spec)?;
        if lo > hi {
            return Err(format!("range {range} runs backwards in {name} field"));
        }
        (lo, hi)
    } else {
        let v = parse_value(range, spec)?;
        // `5/10` means `5-max/10`; a plain value is just itself.
        (v, if step.is_some() { spec.max } else { v })
    };
    let step = step.unwrap_or(1);
    let mut bits = 0u64;
    let mut v = lo;
    while v <= hi {
        bits |= 1 << v;
        v += step;
    }
    Ok(bits)
}

fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_value(s: &str, spec: &FieldSpec) -> Result<u32, String> {
    let name = spec.name;
    if let Some(n) = parse_number(s) {
        if n < spec.min || n > spec.max {
            return Err(format!(
                "{name} value {n} out of range {}-{}",
                spec.min, spec.max
            ));
        }
        return Ok(n);
    }
    if !spec.names.is_empty() {
        if let Some(i) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(spec.names_base + i as u32);
        }
    }
    if s.is_empty() {
        Err(format!("missing value in {name} field"))
    } else {
        Err(format!("invalid value \"{s}\" in {name} field"))
    }
}

/// Looks up an IANA zone name (ASCII case-insensitive, as JavaScript's `Intl` does).
/// `Etc/Unknown` is jiff's placeholder, not a zone, and is refused.
pub fn time_zone(name: &str) -> Option<TimeZone> {
    if name.is_empty() || name.eq_ignore_ascii_case("Etc/Unknown") {
        return None;
    }
    TimeZone::get(name).ok()
}

/// The first slot of an interval schedule after `now`: `next_run_at + k·interval` for the
/// smallest `k ≥ 1` that lands after `now`. A job that missed several slots (the server was
/// down) fires once and then continues on its own grid.
pub fn advance_interval(next_run_at: i64, interval_minutes: i64, now: i64) -> i64 {
    let step = interval_minutes.max(1) * MINUTE_MS;
    let mut k = 1;
    if now >= next_run_at {
        k = (now - next_run_at) / step + 1;
    }
    next_run_at + k * step
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn iso(ms: i64) -> String {
        Timestamp::from_millisecond(ms).unwrap().to_string()
    }

    fn next(expr: &str, tz: &str, after: &str) -> String {
        let c = Cron::parse(expr).unwrap();
        iso(c.next_after(&time_zone(tz).unwrap(), ms(after)).unwrap())
    }

    /// The next `n` firings after `after`.
    fn series(expr: &str, tz: &str, after: &str, n: usize) -> Vec<String> {
        let c = Cron::parse(expr).unwrap();
        let tz = time_zone(tz).unwrap();
        let mut t = ms(after);
        (0..n)
            .map(|_| {
                t = c.next_after(&tz, t).unwrap();
                iso(t)
            })
            .collect()
    }

    fn bits(v: &[u32]) -> u64 {
        v.iter().fold(0, |b, i| b | 1 << i)
    }

    #[test]
    fn fields_lists_ranges_steps() {
        let c = Cron::parse("0,15,30-32 */6 1-10/3 * *").unwrap();
        assert_eq!(c.minutes, bits(&[0, 15, 30, 31, 32]));
        assert_eq!(c.hours as u64, bits(&[0, 6, 12, 18]));
        assert_eq!(c.days as u64, bits(&[1, 4, 7, 10]));
        assert_eq!(c.months as u64, bits(&(1..=12).collect::<Vec<_>>()));
        assert!(c.weekdays_star && !c.days_star);
        let c = Cron::parse("5/20 * * * *").unwrap();
        assert_eq!(c.minutes, bits(&[5, 25, 45]));
    }

    #[test]
    fn names_any_case_and_sunday_seven() {
        let c = Cron::parse("0 0 * jan-Mar,dec mon-FRI").unwrap();
        assert_eq!(c.months as u64, bits(&[1, 2, 3, 12]));
        assert_eq!(c.weekdays as u64, bits(&[1, 2, 3, 4, 5]));
        let c = Cron::parse("0 0 * * 5-7").unwrap();
        assert_eq!(c.weekdays as u64, bits(&[0, 5, 6]));
        assert_eq!(Cron::parse("0 0 * * 7").unwrap().weekdays, 1);
        assert_eq!(
            Cron::parse("0 0 ? * SUN").unwrap(),
            Cron::parse("0 0 * * 0").unwrap()
        );
    }

    #[test]
    fn macros() {
        for (m, e) in [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@HOURLY", "0 * * * *"),
        ] {
            assert_eq!(Cron::parse(m).unwrap(), Cron::parse(e).unwrap(), "{m}");
        }
    }

    #[test]
    fn invalid_expressions_say_why() {
        for (expr, reason) in [
            ("", "expected 5 fields"),
            ("* * * *", "expected 5 fields"),
            ("0 * * * * *", "got 6"),
            ("60 * * * *", "minute value 60 out of range 0-59"),
            ("* 24 * * *", "hour value 24 out of range 0-23"),
            ("* * 0 * *", "day-of-month value 0 out of range 1-31"),
            ("* * 32 * *", "out of range 1-31"),
            ("* * * 13 *", "month value 13 out of range 1-12"),
            ("* * * * 8", "day-of-week value 8 out of range 0-7"),
            ("* * * FOO *", "invalid value \"FOO\" in month field"),
            ("* * * * MON-", "missing value in day-of-week field"),
            ("*/0 * * * *", "step 0 out of range"),
            ("*/x * * * *", "invalid step \"x\""),
            ("5-1 * * * *", "runs backwards"),
            ("1,,2 * * * *", "empty list item"),
            ("-1 * * * *", "missing value in minute field"),
            ("? * * * *", "invalid value \"?\" in minute field"),
            ("@reboot", "unknown macro @reboot"),
            ("L * * * *", "invalid value \"L\""),
            ("0 0 1W * *", "invalid value \"1W\""),
            ("0 0 * * 1#2", "invalid value \"1#2\""),
        ] {
            let e = Cron::parse(expr).unwrap_err();
            assert!(e.to_string().contains(reason), "{expr:?}: {e}");
            assert!(e.to_string().starts_with("Invalid cron expression"), "{e}");
        }
    }

    #[test]
    fn vixie_day_or_semantics() {
        // Both restricted: the 13th OR any Friday.
        let got = series("0 12 13 * 5", "UTC", "2026-02-01T00:00:00Z", 4);
        assert_eq!(
            got,
            [
                "2026-02-06T12:00:00Z",
                "2026-02-13T12:00:00Z",
                "2026-02-20T12:00:00Z",
                "2026-02-27T12:00:00Z"
            ]
        );
        // Day-of-month `*/2` starts with `*`: AND with the weekday (odd days that are Mondays).
        let got = series("0 0 */2 * MON", "UTC", "2026-02-01T00:00:00Z", 2);
        assert_eq!(got, ["2026-02-09T00:00:00Z", "2026-02-23T00:00:00Z"]);
    }

    #[test]
    fn next_is_strictly_after_and_minute_aligned() {
        assert_eq!(
            next("* * * * *", "UTC", "2026-01-01T00:00:00Z"),
            "2026-01-01T00:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "UTC", "2026-01-01T00:00:59.999Z"),
            "2026-01-01T00:01:00Z"
        );
        assert_eq!(
            next("@yearly", "UTC", "2026-06-01T00:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "UTC", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("0 0 31 * *", "UTC", "2026-04-01T00:00:00Z"),
            "2026-05-31T00:00:00Z"
        );
    }

    #[test]
    fn impossible_date_has_no_next_run() {
        let c = Cron::parse("0 0 30 2 *").unwrap();
        assert_eq!(
            c.next_after(&TimeZone::UTC, ms("2026-01-01T00:00:00Z")),
            None
        );
    }

    #[test]
    fn local_time_in_a_zone() {
        // 09:00 in Tokyo (UTC+9, no DST).
        assert_eq!(
            next("0 9 * * *", "Asia/Tokyo", "2026-01-01T00:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
        // Lower-case names are accepted like Intl does.
        assert_eq!(
            next("0 9 * * *", "america/new_york", "2026-01-01T00:00:00Z"),
            "2026-01-01T14:00:00Z"
        );
    }

    #[test]
    fn new_york_spring_forward_gap_fires_at_the_transition() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z); 02:30 does not exist.
        assert_eq!(
            series("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 3),
            [
                "2026-03-08T07:00:00Z", // 03:00 EDT, right after the gap
                "2026-03-09T06:30:00Z", // 02:30 EDT
                "2026-03-10T06:30:00Z"
            ]
        );
        // Matches inside the gap and at its end collapse into one firing.
        assert_eq!(
            series(
                "*/30 * * * *",
                "America/New_York",
                "2026-03-08T06:15:00Z",
                4
            ),
            [
                "2026-03-08T06:30:00Z", // 01:30 EST
                "2026-03-08T07:00:00Z", // 02:00/02:30 (skipped) and 03:00 EDT
                "2026-03-08T07:30:00Z", // 03:30 EDT
                "2026-03-08T08:00:00Z"
            ]
        );
        // The day before and after: 09:00 local is 14:00Z then 13:00Z.
        assert_eq!(
            series("0 9 * * *", "America/New_York", "2026-03-07T00:00:00Z", 2),
            ["2026-03-07T14:00:00Z", "2026-03-08T13:00:00Z"]
        );
    }

    #[test]
    fn new_york_fall_back_repeat_fires_once() {
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST (06:00Z); 01:30 happens twice.
        assert_eq!(
            series("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 3),
            [
                "2026-11-01T05:30:00Z", // 01:30 EDT, the first occurrence only
                "2026-11-02T06:30:00Z", // 01:30 EST
                "2026-11-03T06:30:00Z"
            ]
        );
        assert_eq!(
            series("0 * * * *", "America/New_York", "2026-11-01T03:30:00Z", 4),
            [
                "2026-11-01T04:00:00Z", // 00:00 EDT
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T07:00:00Z", // 02:00 EST (01:00 EST is a repeat)
                "2026-11-01T08:00:00Z"
            ]
        );
        // Asked from inside the second pass of the fold: no repeat, next is 02:00 EST.
        assert_eq!(
            next("*/15 * * * *", "America/New_York", "2026-11-01T06:10:00Z"),
            "2026-11-01T07:00:00Z"
        );
    }

    #[test]
    fn berlin_spring_forward_gap_fires_at_the_transition() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00Z).
        assert_eq!(
            series("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        );
        assert_eq!(
            series(
                "0 8 * * MON-FRI",
                "Europe/Berlin",
                "2026-03-26T12:00:00Z",
                2
            ),
            ["2026-03-27T07:00:00Z", "2026-03-30T06:00:00Z"]
        );
    }

    #[test]
    fn berlin_fall_back_repeat_fires_once() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00Z); 02:30 happens twice.
        assert_eq!(
            series("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
    }

    #[test]
    fn time_zone_names() {
        assert!(time_zone("Europe/Berlin").is_some());
        assert!(time_zone("europe/berlin").is_some());
        assert!(time_zone("UTC").is_some());
        assert!(time_zone("Mars/Phobos").is_none());
        assert!(time_zone("Etc/Unknown").is_none());
        assert!(time_zone("").is_none());
    }

    #[test]
    fn interval_slots_from_next_run_at() {
        let t = ms("2026-03-08T06:00:00Z");
        // Not yet due: one step.
        assert_eq!(advance_interval(t, 7, t - 1), t + 7 * MINUTE_MS);
        // Due now: next slot.
        assert_eq!(advance_interval(t, 7, t), t + 7 * MINUTE_MS);
        // Missed many slots: the first slot after now, on the original grid.
        assert_eq!(
            advance_interval(t, 60, t + 5 * 60 * MINUTE_MS + 1),
            t + 6 * 60 * MINUTE_MS
        );
        // DST does not bend intervals: every 60 minutes of real time across the New York gap.
        let mut n = t;
        let mut got = Vec::new();
        for _ in 0..3 {
            n = advance_interval(n, 60, n);
            got.push(iso(n));
        }
        assert_eq!(
            got,
            [
                "2026-03-08T07:00:00Z",
                "2026-03-08T08:00:00Z",
                "2026-03-08T09:00:00Z"
            ]
        );
    }
}
