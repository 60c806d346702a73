//! Cron parsing: an expression and a time zone (split at the first tab);
//! a schedule that parses gives strictly increasing fire times.
#![no_main]
use automation_host::scheduler::cron::Schedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (expr, tz) = text.split_once('\t').unwrap_or((&text, "UTC"));
    if let Ok(s) = Schedule::parse(expr, tz) {
        let from = chrono::DateTime::parse_from_rfc3339("2026-03-29T00:30:00Z").unwrap().with_timezone(&chrono::Utc);
        let times = s.upcoming(from, 3);
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }
});
