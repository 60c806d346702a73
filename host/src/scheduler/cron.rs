//! Cron maths: an expression in an IANA time zone, and when it fires next.
//!
//! Dialect (parsed by `croner`, which handles it; the `cron` crate does not:
//! it needs 6+ fields, rejects `L`/`W`/`#` and numbers weekdays from
//! Sunday = 1):
//! - 5 fields `min hour dom month dow`, or 6 with seconds first, or 7 with a
//!   trailing year; `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//!   `@hourly`; month and day names; `*`, `,`, `-`, `/`, `?`; `L` (last day
//!   of month, last weekday `5L`), `W` (nearest weekday `15W`), `#` (nth
//!   weekday `1#2`); weekdays 0-7 with 0 and 7 both Sunday.
//! - When day-of-month and day-of-week are both restricted, either matching
//!   is enough (Vixie cron).
//!
//! Time zones follow the reference service's rules, which are not croner's:
//! - a local time that does not exist (spring forward) fires once, shifted by
//!   the length of the gap: 02:30 in a 02:00→03:00 gap fires at 03:30 new
//!   time (the pre-transition offset applied to the wall time);
//! - an ambiguous local time (fall back) fires once, at its first occurrence.
//!
//! So the pattern is matched on naive wall-clock times, and this module maps
//! each match to an instant itself. Away from transitions that mapping is
//! monotonic and the first match is the answer; near one it is not (a
//! shifted 02:30 lands after a real 03:00), so there the candidates within a
//! few hours are compared.

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// How far a transition can move a wall-clock time. Real gaps are an hour or
/// less (a few historic ones are 2 h); three hours covers them with margin.
const TRANSITION_WINDOW: Duration = Duration::hours(3);

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The expression does not parse.
    #[error("invalid cron expression {expr:?}: {reason}")]
    Expression {
        /// The expression.
        expr: String,
        /// What is wrong, from the parser.
        reason: String,
    },
    /// The expression parses but can never fire (`0 0 31 2 *`).
    #[error("cron expression {0:?} never fires")]
    NeverFires(String),
    /// The time zone is not an IANA name.
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/Paris or UTC")]
    TimeZone(String),
}

/// A parsed schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    /// Parses an expression and a time zone, and checks the schedule fires at
    /// least once in the next ten years.
    pub fn parse(expr: &str, timezone: &str) -> Result<Schedule, CronError> {
        let tz = Tz::from_str(timezone).map_err(|_| CronError::TimeZone(timezone.to_owned()))?;
        let trimmed = expr.trim();
        let fields = trimmed.split_whitespace().count();
        if !trimmed.starts_with('@') && !(5..=7).contains(&fields) {
            return Err(CronError::Expression {
                expr: expr.to_owned(),
                reason: format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), \
                     6 with seconds first, or 7 with a year; got {fields}"
                ),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .dom_and_dow(false)
            .build()
            .parse(trimmed)
            .map_err(|e| CronError::Expression { expr: expr.to_owned(), reason: e.to_string() })?;
        let schedule = Schedule { cron, tz };
        let now = Utc::now();
        match schedule.next_after(now) {
            Some(t) if t - now < Duration::days(3660) => Ok(schedule),
            _ => Err(CronError::NeverFires(expr.to_owned())),
        }
    }

    /// The schedule's time zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `after`, or `None` if there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz).naive_local();
        if !self.transition_near(after) {
            // No offset change within the window: wall time maps to instants
            // monotonically, so the first match after `local` is the answer.
            let n = self.cron.find_next_occurrence(&local, false).ok()?;
            let t = self.resolve(n);
            if t > after && !self.transition_near(t) {
                return Some(t);
            }
        }
        self.next_after_near_transition(after, local)
    }

    /// The next `count` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut cursor = after;
        while out.len() < count {
            match self.next_after(cursor) {
                Some(t) => {
                    out.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        out
    }

    /// Scans every wall-clock match from a window before `after` and keeps
    /// the earliest instant past it. Runs only near an offset change.
    fn next_after_near_transition(&self, after: DateTime<Utc>, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let mut cursor = local - TRANSITION_WINDOW;
        let mut best: Option<DateTime<Utc>> = None;
        loop {
            let n = self.cron.find_next_occurrence(&cursor, false).ok()?;
            if let Some(b) = best {
                // Later matches map at least this far past `b`; stop.
                if n > b.with_timezone(&self.tz).naive_local() + TRANSITION_WINDOW {
                    return best;
                }
            }
            let t = self.resolve(n);
            if t > after && best.is_none_or(|b| t < b) {
                best = Some(t);
            }
            cursor = n;
        }
    }

    /// Maps a wall-clock match to an instant by the rules in the module docs.
    fn resolve(&self, n: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&n) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
            LocalResult::None => {
                // In a gap: apply the offset in force before it.
                let before = n - TRANSITION_WINDOW;
                let offset = match self.tz.from_local_datetime(&before) {
                    LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.offset().fix(),
                    LocalResult::None => self.tz.offset_from_utc_datetime(&before).fix(),
                };
                Utc.from_utc_datetime(&(n - Duration::seconds(i64::from(offset.local_minus_utc()))))
            }
        }
    }

    /// True if the zone's UTC offset differs anywhere around `t`.
    fn transition_near(&self, t: DateTime<Utc>) -> bool {
        let offset_at = |t: DateTime<Utc>| self.tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        let (a, b, c) = (offset_at(t - TRANSITION_WINDOW), offset_at(t), offset_at(t + TRANSITION_WINDOW));
        a != b || b != c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, tz: &str, after: &str) -> String {
        let s = Schedule::parse(expr, tz).unwrap();
        s.next_after(utc(after)).unwrap().to_rfc3339()
    }

    fn all(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let s = Schedule::parse(expr, tz).unwrap();
        s.upcoming(utc(from), n).iter().map(|t| t.to_rfc3339()).collect()
    }

    #[test]
    fn reference_next_fire_cases() {
        assert_eq!(next("0 9 * * *", "UTC", "2026-03-16T08:00:00Z"), "2026-03-16T09:00:00+00:00");
        assert_eq!(next("0 9 * * *", "UTC", "2026-03-16T10:00:00Z"), "2026-03-17T09:00:00+00:00");
        // 2026-03-15 is a Sunday; `5` is Friday.
        assert_eq!(next("0 9 * * 5", "UTC", "2026-03-15T00:00:00Z"), "2026-03-20T09:00:00+00:00");
        assert_eq!(next("* * * * *", "UTC", "2026-03-16T10:30:45Z"), "2026-03-16T10:31:00+00:00");
        assert_eq!(next("0 9 * * *", "America/New_York", "2026-06-01T12:00:00Z"), "2026-06-01T13:00:00+00:00");
        assert_eq!(next("0 2 * * *", "America/Los_Angeles", "2026-06-01T08:00:00Z"), "2026-06-01T09:00:00+00:00");
    }

    #[test]
    fn dialect() {
        // Six fields: seconds first.
        assert_eq!(next("*/10 * * * * *", "UTC", "2026-01-01T00:00:01Z"), "2026-01-01T00:00:10+00:00");
        assert_eq!(next("@hourly", "UTC", "2026-01-01T00:00:01Z"), "2026-01-01T01:00:00+00:00");
        assert_eq!(next("0 0 * JAN MON", "UTC", "2026-01-01T00:00:00Z"), "2026-01-05T00:00:00+00:00");
        // L: last day of the month; W: nearest weekday; #: nth weekday.
        assert_eq!(next("0 0 L * *", "UTC", "2026-02-01T00:00:00Z"), "2026-02-28T00:00:00+00:00");
        assert_eq!(next("0 0 15W * *", "UTC", "2026-02-01T00:00:00Z"), "2026-02-16T00:00:00+00:00");
        assert_eq!(next("0 0 * * 1#2", "UTC", "2026-01-01T00:00:00Z"), "2026-01-12T00:00:00+00:00");
        // 0 and 7 are both Sunday.
        assert_eq!(next("0 0 * * 7", "UTC", "2026-01-01T00:00:00Z"), next("0 0 * * 0", "UTC", "2026-01-01T00:00:00Z"));
        // Day-of-month OR day-of-week (Vixie): the 13th, or any Friday.
        assert_eq!(
            all("0 0 13 * 5", "UTC", "2026-02-01T00:00:00Z", 3),
            ["2026-02-06T00:00:00+00:00", "2026-02-13T00:00:00+00:00", "2026-02-20T00:00:00+00:00"]
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let err = Schedule::parse("61 * * * *", "UTC").unwrap_err().to_string();
        assert!(err.contains("61 * * * *"), "{err}");
        let err = Schedule::parse("* * * *", "UTC").unwrap_err().to_string();
        assert!(err.contains("got 4"), "{err}");
        assert_eq!(Schedule::parse("0 0 31 2 *", "UTC").unwrap_err(), CronError::NeverFires("0 0 31 2 *".into()));
        assert!(Schedule::parse("0 0 29 2 *", "UTC").is_ok());
        assert_eq!(
            Schedule::parse("* * * * *", "Mars/Olympus").unwrap_err(),
            CronError::TimeZone("Mars/Olympus".into())
        );
        assert!(Schedule::parse("@reboot", "UTC").is_err());
    }

    #[test]
    fn spring_forward_gap_fires_once_shifted_by_the_gap() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        assert_eq!(
            all("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T07:30:00+00:00", // 02:30 EST
                "2026-03-08T07:30:00+00:00", // 02:30 does not exist: 03:30 EDT
                "2026-03-09T06:30:00+00:00", // 02:30 EDT
            ]
        );
        // Every 30 minutes across the gap: 02:00 and 02:30 shift onto 03:00
        // and 03:30, which fire once each.
        assert_eq!(
            all("*/30 * * * *", "America/New_York", "2026-03-08T06:00:00Z", 4),
            [
                "2026-03-08T06:30:00+00:00", // 01:30 EST
                "2026-03-08T07:00:00+00:00", // 02:00 -> 03:00 EDT
                "2026-03-08T07:30:00+00:00", // 02:30 -> 03:30 EDT
                "2026-03-08T08:00:00+00:00", // 04:00 EDT
            ]
        );
        // Europe: Paris, 2026-03-29, 02:00 CET -> 03:00 CEST.
        assert_eq!(next("30 2 * * *", "Europe/Paris", "2026-03-28T23:00:00Z"), "2026-03-29T01:30:00+00:00");
    }

    #[test]
    fn fall_back_ambiguous_time_fires_once_at_first_occurrence() {
        // New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST.
        assert_eq!(
            all("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"]
        );
        // From inside the repeated hour, the second 01:30 does not fire.
        assert_eq!(next("30 1 * * *", "America/New_York", "2026-11-01T06:00:00Z"), "2026-11-02T06:30:00+00:00");
        // Sydney falls back on 2026-04-05: 03:00 AEDT -> 02:00 AEST.
        assert_eq!(next("30 2 * * *", "Australia/Sydney", "2026-04-04T12:00:00Z"), "2026-04-04T15:30:00+00:00");
        // Hourly through the repeated hour: 01:00 fires once.
        assert_eq!(
            all("0 * * * *", "America/New_York", "2026-11-01T04:30:00Z", 3),
            ["2026-11-01T05:00:00+00:00", "2026-11-01T07:00:00+00:00", "2026-11-01T08:00:00+00:00"]
        );
    }

    /// Cross-checks against the `cron` crate where the two dialects agree
    /// (6 fields with seconds, UTC, no `L`/`W`/`#`, no day-of-week numbers:
    /// it counts Sunday as 1).
    #[test]
    fn agrees_with_the_cron_crate_where_dialects_overlap() {
        use std::str::FromStr as _;
        for expr in [
            "0 */5 * * * *",
            "30 15 10 * * *",
            "0 0 0 1 * *",
            "0 0 12 * JAN,JUL *",
            "*/20 * 9-17 * * *",
            "0 30 8 * * MON-FRI",
            "0 0 0 29 2 *",
            "15,45 10 */3 * * *",
        ] {
            let theirs = cron::Schedule::from_str(expr).unwrap();
            let ours = Schedule::parse(expr, "UTC").unwrap();
            let from = utc("2026-01-30T23:59:59Z");
            // The cron crate stops at the year 2099; compare what it gives.
            let expected: Vec<DateTime<Utc>> = theirs.after(&from).take(60).collect();
            assert!(expected.len() >= 18, "{expr}");
            assert_eq!(ours.upcoming(from, expected.len()), expected, "{expr}");
        }
    }

    #[test]
    fn fire_times_always_increase() {
        for tz in ["America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"] {
            for expr in ["*/7 * * * *", "0 */2 * * *", "30 2 * * *", "15 1 * * *"] {
                let s = Schedule::parse(expr, tz).unwrap();
                let times = s.upcoming(utc("2026-01-01T00:00:00Z"), 3000);
                assert!(times.windows(2).all(|w| w[0] < w[1]), "{expr} in {tz}");
            }
        }
    }

    /// Bounded property test (fuzz target `cron_parse`): expressions made of
    /// cron's own alphabet never panic; those that parse give strictly
    /// increasing fire times.
    #[test]
    fn property_random_cron_expressions_parse_or_refuse_and_fire_in_order() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xc40f);
        let atoms = [
            "*",
            "*/5",
            "0",
            "1",
            "7",
            "12",
            "23",
            "31",
            "59",
            "60",
            "1-5",
            "5-1",
            "1,3",
            "?",
            "L",
            "MON",
            "jan",
            "*/0",
            "-",
            ",",
            "99999999999",
        ];
        let zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kathmandu", "Nope/Zone"];
        let from = utc("2026-03-29T00:30:00Z");
        let mut parsed = 0;
        for _ in 0..500 {
            // Mostly five fields of plausible atoms, so many parse; the rest anything.
            let fields = if rng.random_bool(0.7) { 5 } else { rng.random_range(1..8) };
            let expr: Vec<&str> = (0..fields)
                .map(|_| {
                    if rng.random_bool(0.6) {
                        atoms[rng.random_range(0..3)]
                    } else {
                        atoms[rng.random_range(0..atoms.len())]
                    }
                })
                .collect();
            let expr = expr.join(" ");
            let zone = zones[rng.random_range(0..zones.len())];
            if let Ok(s) = Schedule::parse(&expr, zone) {
                parsed += 1;
                let times = s.upcoming(from, 5);
                assert!(times.windows(2).all(|w| w[0] < w[1]), "{expr} {zone}: {times:?}");
                assert!(times.iter().all(|t| *t > from), "{expr} {zone}");
            }
        }
        assert!(parsed > 10, "the generator should make some valid expressions ({parsed})");
    }
}
