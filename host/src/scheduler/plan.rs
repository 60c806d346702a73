//! Deciding what happens to due cron slots (pure, tested with fixed clocks):
//! per automation ([`decide`]), and for a batch of due automations, down to
//! the slot rows and runs the store writes ([`plan_batch`]).

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::cron::Schedule;
use crate::model::{ConcurrencyPolicy, MisfirePolicy, RunTrigger, Trigger};
use crate::store::{DueAutomation, NextFire, PlannedSlot, SlotPlan};

/// Most slots enumerated for one automation in one pass; beyond this (an
/// every-second schedule after a long outage) the rest are summarised.
pub const MAX_SLOTS: usize = 1000;

pub use crate::model::SlotOutcome;

/// The decision for one due automation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Each due slot and its outcome, oldest first.
    pub slots: Vec<(DateTime<Utc>, SlotOutcome)>,
    /// Slots skipped over without a row (beyond [`MAX_SLOTS`]).
    pub unrecorded: u64,
    /// The next slot after now.
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// What the plan needs to know about an automation.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Its schedule.
    pub schedule: &'a Schedule,
    /// The first slot not yet handled.
    pub next_fire_at: DateTime<Utc>,
    /// Its misfire policy.
    pub misfire: MisfirePolicy,
    /// Its concurrency limit and policy, and how many runs it has going.
    pub concurrency: (u32, ConcurrencyPolicy, i64),
}

/// Decides the due slots of one automation at `now`. The latest due slot
/// fires if it is at most `grace` old; every other due slot is a misfire,
/// handled by the policy: `skip` fires none,
/// `run_once` fires the latest, `run_all` fires up to `cap` (the latest
/// ones). Slots within `grace` fire. A slot that would fire while the
/// automation is at its concurrency limit with policy `skip` is
/// `skipped_overlap`.
pub fn decide(inputs: Inputs<'_>, now: DateTime<Utc>, grace: Duration, cap: usize) -> Decision {
    // Keep the latest MAX_SLOTS slots: after a long outage those are the
    // ones a policy may fire; older ones are only counted.
    let mut due = std::collections::VecDeque::new();
    let mut unrecorded = 0u64;
    let mut t = Some(inputs.next_fire_at);
    let mut steps = 0u32;
    while let Some(slot) = t.filter(|s| *s <= now) {
        due.push_back(slot);
        if due.len() > MAX_SLOTS {
            due.pop_front();
            unrecorded += 1;
        }
        steps += 1;
        if steps >= 2_000_000 {
            // An every-second schedule down for weeks: stop counting.
            t = inputs.schedule.next_after(now);
            break;
        }
        t = inputs.schedule.next_after(slot);
    }
    let due: Vec<DateTime<Utc>> = due.into();
    let next_fire_at = t;
    // Only the latest due slot can be on time (the loop wakes for each slot,
    // so in steady state there is one); every earlier one was missed.
    let last = due.len().saturating_sub(1);
    let late: Vec<bool> = due.iter().enumerate().map(|(i, s)| i < last || now - *s > grace).collect();
    let late_count = late.iter().filter(|l| **l).count();
    let mut fire: Vec<bool> = late.iter().map(|l| !l).collect();
    let late_indices: Vec<usize> = (0..due.len()).filter(|i| late[*i]).collect();
    match inputs.misfire {
        MisfirePolicy::Skip => {}
        MisfirePolicy::RunOnce => {
            // The latest missed slot, unless an on-time slot fires anyway.
            if late_count > 0 && !fire.iter().any(|f| *f) {
                fire[*late_indices.last().expect("late_count > 0")] = true;
            }
        }
        MisfirePolicy::RunAll => {
            for i in late_indices.iter().rev().take(cap) {
                fire[*i] = true;
            }
        }
    }
    let (limit, policy, mut active) = inputs.concurrency;
    let slots = due
        .into_iter()
        .zip(fire)
        .map(|(slot, fires)| {
            let outcome = if !fires {
                SlotOutcome::Missed
            } else if policy == ConcurrencyPolicy::Skip && active >= i64::from(limit) {
                SlotOutcome::SkippedOverlap
            } else {
                active += 1;
                SlotOutcome::Fired
            };
            (slot, outcome)
        })
        .collect();
    Decision { slots, unrecorded, next_fire_at }
}

/// The slots and runs of a batch of due automations: each automation's
/// [`Decision`] (from `decide`; `None` stops its schedule) turned into slot
/// rows, a run (with its cron trigger) per fired slot, and its next fire
/// time.
pub fn plan_batch(due: &[DueAutomation], mut decide: impl FnMut(&DueAutomation) -> Option<Decision>) -> SlotPlan {
    let mut plan = SlotPlan::default();
    for automation in due {
        let Some(decision) = decide(automation) else {
            plan.next.push(NextFire { automation_id: automation.id, next_fire_at: None, fired: false });
            continue;
        };
        let mut fired = false;
        for (at, outcome) in decision.slots {
            let run = (outcome == SlotOutcome::Fired).then(|| (Uuid::now_v7(), cron_trigger(&automation.trigger, at)));
            fired |= run.is_some();
            plan.slots.push(PlannedSlot { automation_id: automation.id, scheduled_for: at, outcome, run });
        }
        plan.next.push(NextFire { automation_id: automation.id, next_fire_at: decision.next_fire_at, fired });
    }
    plan
}

/// The trigger of a run fired by the cron slot `at`: its payload names the
/// slot, the schedule and the time zone.
pub fn cron_trigger(trigger: &Trigger, at: DateTime<Utc>) -> RunTrigger {
    let (schedule, timezone) = match trigger {
        Trigger::Cron { schedule, timezone, .. } => (schedule.as_str(), timezone.as_str()),
        _ => ("", ""),
    };
    RunTrigger {
        kind: "cron".into(),
        payload: serde_json::json!({"scheduled_for": at, "schedule": schedule, "timezone": timezone}),
        event_id: None,
        event_key: None,
        scheduled_for: Some(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SlotOutcome::{Fired, Missed, SkippedOverlap};

    fn due(id: u128, next: &str, concurrency: u32, active_runs: i64) -> DueAutomation {
        DueAutomation {
            id: Uuid::from_u128(id),
            trigger: Trigger::Cron {
                schedule: "* * * * *".into(),
                timezone: "Europe/Paris".into(),
                misfire: MisfirePolicy::RunAll,
            },
            next_fire_at: t(next),
            concurrency,
            concurrency_policy: ConcurrencyPolicy::Skip,
            active_runs,
        }
    }

    #[test]
    fn a_batch_becomes_slot_rows_runs_and_next_fire_times() {
        let schedule = Schedule::parse("* * * * *", "UTC").unwrap();
        let now = t("2026-01-01T10:01:30Z");
        let batch = [
            due(1, "2026-01-01T10:00:00Z", 5, 0),
            due(2, "2026-01-01T10:01:00Z", 1, 1),
            due(3, "2026-01-01T10:00:00Z", 1, 0),
        ];
        let plan = plan_batch(&batch, |d| {
            (d.id != Uuid::from_u128(3)).then(|| {
                let concurrency = (d.concurrency, d.concurrency_policy, d.active_runs);
                let inputs = Inputs {
                    schedule: &schedule,
                    next_fire_at: d.next_fire_at,
                    misfire: MisfirePolicy::RunAll,
                    concurrency,
                };
                decide(inputs, now, Duration::seconds(60), 3)
            })
        });
        let outcomes: Vec<(u128, SlotOutcome, bool)> =
            plan.slots.iter().map(|s| (s.automation_id.as_u128(), s.outcome, s.run.is_some())).collect();
        // 1 fires both its slots (run_all, free); 2 is busy (policy skip).
        assert_eq!(outcomes, [(1, Fired, true), (1, Fired, true), (2, SkippedOverlap, false)]);
        let (_, trigger) = plan.slots[0].run.as_ref().unwrap();
        assert_eq!(trigger.kind, "cron");
        assert_eq!(trigger.scheduled_for, Some(t("2026-01-01T10:00:00Z")));
        assert_eq!(trigger.payload["timezone"], "Europe/Paris");
        assert_ne!(plan.slots[0].run.as_ref().unwrap().0, plan.slots[1].run.as_ref().unwrap().0, "one run id each");
        let next: Vec<(u128, Option<DateTime<Utc>>, bool)> =
            plan.next.iter().map(|n| (n.automation_id.as_u128(), n.next_fire_at, n.fired)).collect();
        let after = Some(t("2026-01-01T10:02:00Z"));
        // 3 got no decision: its schedule stops, nothing recorded.
        assert_eq!(next, [(1, after, true), (2, after, false), (3, None, false)]);
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn run(misfire: MisfirePolicy, next: &str, now: &str, concurrency: (u32, ConcurrencyPolicy, i64)) -> Decision {
        let schedule = Schedule::parse("* * * * *", "UTC").unwrap();
        decide(
            Inputs { schedule: &schedule, next_fire_at: t(next), misfire, concurrency },
            t(now),
            Duration::seconds(60),
            3,
        )
    }

    fn outcomes(d: &Decision) -> Vec<SlotOutcome> {
        d.slots.iter().map(|(_, o)| *o).collect()
    }

    const FREE: (u32, ConcurrencyPolicy, i64) = (10, ConcurrencyPolicy::Queue, 0);

    #[test]
    fn an_on_time_slot_fires_and_the_next_is_after_now() {
        let d = run(MisfirePolicy::Skip, "2026-01-01T10:00:00Z", "2026-01-01T10:00:00.300Z", FREE);
        assert_eq!(outcomes(&d), [Fired]);
        assert_eq!(d.next_fire_at, Some(t("2026-01-01T10:01:00Z")));
        let none = run(MisfirePolicy::Skip, "2026-01-01T10:01:00Z", "2026-01-01T10:00:59Z", FREE);
        assert!(none.slots.is_empty());
        assert_eq!(none.next_fire_at, Some(t("2026-01-01T10:01:00Z")));
    }

    #[test]
    fn misfire_policies_after_downtime() {
        // Down from 10:00 to 10:05:30: slots 10:00..10:04 are late, 10:05 is on time.
        let now = "2026-01-01T10:05:30Z";
        assert_eq!(
            outcomes(&run(MisfirePolicy::Skip, "2026-01-01T10:00:00Z", now, FREE)),
            [Missed, Missed, Missed, Missed, Missed, Fired]
        );
        // run_once: an on-time slot fires, so no late one needs to.
        assert_eq!(
            outcomes(&run(MisfirePolicy::RunOnce, "2026-01-01T10:00:00Z", now, FREE)),
            [Missed, Missed, Missed, Missed, Missed, Fired]
        );
        let only_late = "2026-01-01T10:07:30Z"; // 10:00..10:06 late, 10:07 on time
        let d = run(MisfirePolicy::RunAll, "2026-01-01T10:00:00Z", only_late, FREE);
        assert_eq!(outcomes(&d), [Missed, Missed, Missed, Missed, Fired, Fired, Fired, Fired]);
        // All late (the last slot is over a minute old): run_once fires the latest.
        let schedule = Schedule::parse("0 * * * *", "UTC").unwrap();
        let d = decide(
            Inputs {
                schedule: &schedule,
                next_fire_at: t("2026-01-01T08:00:00Z"),
                misfire: MisfirePolicy::RunOnce,
                concurrency: FREE,
            },
            t("2026-01-01T10:30:00Z"),
            Duration::seconds(60),
            3,
        );
        assert_eq!(outcomes(&d), [Missed, Missed, Fired]);
        assert_eq!(d.slots[2].0, t("2026-01-01T10:00:00Z"));
        assert_eq!(d.next_fire_at, Some(t("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn overlap_with_policy_skip() {
        let busy = (1, ConcurrencyPolicy::Skip, 1);
        assert_eq!(
            outcomes(&run(MisfirePolicy::Skip, "2026-01-01T10:00:00Z", "2026-01-01T10:00:01Z", busy)),
            [SkippedOverlap]
        );
        let free = (1, ConcurrencyPolicy::Skip, 0);
        assert_eq!(
            outcomes(&run(MisfirePolicy::RunAll, "2026-01-01T10:00:00Z", "2026-01-01T10:00:59Z", free)),
            [Fired]
        );
        // Queue policy never skips at slot time: the dispatcher queues.
        let queued = (1, ConcurrencyPolicy::Queue, 5);
        assert_eq!(
            outcomes(&run(MisfirePolicy::Skip, "2026-01-01T10:00:00Z", "2026-01-01T10:00:01Z", queued)),
            [Fired]
        );
    }

    #[test]
    fn huge_backlogs_are_bounded() {
        let schedule = Schedule::parse("* * * * * *", "UTC").unwrap();
        let d = decide(
            Inputs {
                schedule: &schedule,
                next_fire_at: t("2026-01-01T00:00:00Z"),
                misfire: MisfirePolicy::RunOnce,
                concurrency: FREE,
            },
            t("2026-01-03T00:00:00Z"),
            Duration::seconds(60),
            3,
        );
        assert_eq!(d.slots.len(), MAX_SLOTS);
        assert_eq!(d.unrecorded, 2 * 86_400 + 1 - MAX_SLOTS as u64);
        // The one that fires is the latest missed slot.
        assert_eq!(
            d.slots.iter().filter(|(_, o)| *o == Fired).map(|(s, _)| *s).collect::<Vec<_>>(),
            [t("2026-01-03T00:00:00Z")]
        );
        assert!(d.next_fire_at.unwrap() > t("2026-01-03T00:00:00Z"));
    }
}
