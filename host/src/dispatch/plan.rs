//! Which pending runs a claim starts, skips or cancels (pure, tested
//! without a database; the store reads the candidates and applies the
//! choice in one transaction).

use crate::model::{ConcurrencyPolicy, RunStatus};
use crate::store::{ClaimCandidates, ClaimChoice};

/// Goes through the pending runs oldest first: a deleted automation's runs
/// are cancelled; a run whose automation has a free slot (below its
/// `concurrency`, counting its running runs and the ones claimed here) is
/// claimed while `budget` lasts; a run over the limit of a `skip`
/// automation is skipped; the rest wait (`queue`, or no budget left).
pub fn choose_claims(candidates: &ClaimCandidates, budget: usize) -> ClaimChoice {
    let mut free: std::collections::HashMap<uuid::Uuid, (i64, ConcurrencyPolicy, bool)> =
        candidates.automations.iter().map(|a| (a.id, (a.concurrency - a.running, a.policy, a.deleted))).collect();
    let mut choice = ClaimChoice::default();
    for (run, automation) in &candidates.pending {
        let Some((slots, policy, deleted)) = free.get_mut(automation) else { continue };
        if *deleted {
            choice.cancel.push(*run);
        } else if *slots > 0 && choice.claim.len() < budget {
            *slots -= 1;
            choice.claim.push(*run);
        } else if *slots <= 0 && *policy == ConcurrencyPolicy::Skip {
            choice.skip.push(*run);
        }
    }
    choice
}

/// Whether an automation's latest run outcomes (newest first: succeeded,
/// failed or timed out, since it was last enabled) disable it: the newest
/// `threshold` of them all failed (timed-out counts as failed). Returns the
/// failed runs, oldest first, to name them; `threshold` 0 never disables.
pub fn failure_streak(threshold: u32, recent: &[(uuid::Uuid, RunStatus)]) -> Option<Vec<uuid::Uuid>> {
    let n = threshold as usize;
    if n == 0 || recent.len() < n {
        return None;
    }
    let streak = &recent[..n];
    if streak.iter().all(|(_, s)| matches!(s, RunStatus::Failed | RunStatus::TimedOut)) {
        Some(streak.iter().rev().map(|(id, _)| *id).collect())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ClaimAutomation;
    use uuid::Uuid;

    fn automation(id: u128, concurrency: i64, policy: ConcurrencyPolicy, running: i64) -> ClaimAutomation {
        ClaimAutomation { id: Uuid::from_u128(id), concurrency, policy, deleted: false, running }
    }

    fn ids(v: &[Uuid]) -> Vec<u128> {
        v.iter().map(|u| u.as_u128()).collect()
    }

    fn candidates(automations: Vec<ClaimAutomation>, pending: &[(u128, u128)]) -> ClaimCandidates {
        ClaimCandidates {
            automations,
            pending: pending.iter().map(|(r, a)| (Uuid::from_u128(*r), Uuid::from_u128(*a))).collect(),
        }
    }

    #[test]
    fn concurrency_policy_and_budget_decide() {
        let c = candidates(
            vec![
                automation(1, 2, ConcurrencyPolicy::Queue, 1), // one slot free
                automation(2, 1, ConcurrencyPolicy::Skip, 1),  // full, skip
                automation(3, 5, ConcurrencyPolicy::Queue, 0), // free
            ],
            &[(10, 1), (11, 1), (12, 2), (13, 3), (14, 3), (15, 9)],
        );
        let choice = choose_claims(&c, 10);
        assert_eq!(ids(&choice.claim), [10, 13, 14]);
        assert_eq!(ids(&choice.skip), [12], "over a skip automation's limit");
        assert!(choice.cancel.is_empty());
        // 11 waits (queue, full); 15 belongs to no locked automation: untouched.

        // The budget caps claims; runs a free slot would take still wait.
        let choice = choose_claims(&c, 1);
        assert_eq!(ids(&choice.claim), [10]);
        assert_eq!(ids(&choice.skip), [12]);
        // No budget (a draining host) claims nothing, but still skips.
        let choice = choose_claims(&c, 0);
        assert!(choice.claim.is_empty());
        assert_eq!(ids(&choice.skip), [12]);
    }

    /// The store reads only `pending_to_read` of each automation's oldest
    /// pending runs: whatever the budget, the choice must be the one made
    /// over all of them.
    #[test]
    fn reading_only_the_runs_a_claim_could_act_on_changes_no_choice() {
        let mut gone = automation(5, 2, ConcurrencyPolicy::Queue, 0);
        gone.deleted = true;
        let automations = vec![
            automation(1, 2, ConcurrencyPolicy::Queue, 1), // one free slot
            automation(2, 1, ConcurrencyPolicy::Queue, 1), // full: none read
            automation(3, 1, ConcurrencyPolicy::Skip, 0),  // one claimed, rest skipped
            automation(4, 3, ConcurrencyPolicy::Queue, 0), // three free
            gone,
        ];
        // Forty pending runs, interleaved over the five automations (and one unknown).
        let pending: Vec<(u128, u128)> = (100..140).map(|r| (r, [1, 2, 3, 4, 5, 9][(r % 6) as usize])).collect();
        let all = candidates(automations.clone(), &pending);
        let mut read: Vec<(u128, u128)> = Vec::new();
        for a in &automations {
            let n = a.pending_to_read().max(0) as usize;
            read.extend(pending.iter().filter(|(_, auto)| Uuid::from_u128(*auto) == a.id).take(n));
        }
        read.sort();
        assert!(read.len() < pending.len() / 2, "most rows are not read: {}", read.len());
        let some = candidates(automations, &read);
        for budget in [0, 1, 2, 3, 5, 100] {
            assert_eq!(choose_claims(&some, budget), choose_claims(&all, budget), "budget {budget}");
        }
    }

    #[test]
    fn a_deleted_automations_runs_are_cancelled() {
        let mut gone = automation(1, 5, ConcurrencyPolicy::Queue, 0);
        gone.deleted = true;
        let choice = choose_claims(&candidates(vec![gone], &[(10, 1), (11, 1)]), 10);
        assert_eq!(ids(&choice.cancel), [10, 11]);
        assert!(choice.claim.is_empty());
    }

    #[test]
    fn a_skip_automation_with_a_free_slot_claims_then_skips_the_rest() {
        let c = candidates(vec![automation(1, 1, ConcurrencyPolicy::Skip, 0)], &[(10, 1), (11, 1)]);
        let choice = choose_claims(&c, 10);
        assert_eq!(ids(&choice.claim), [10]);
        assert_eq!(ids(&choice.skip), [11]);
    }

    #[test]
    fn failures_in_a_row_disable_and_a_success_breaks_the_streak() {
        use RunStatus::*;
        let r = |v: &[(u128, RunStatus)]| v.iter().map(|(i, s)| (Uuid::from_u128(*i), *s)).collect::<Vec<_>>();
        // Newest first: three failures (one a timeout) disable at 3, named oldest first.
        let three = r(&[(9, Failed), (8, TimedOut), (7, Failed), (6, Succeeded)]);
        assert_eq!(failure_streak(3, &three).map(|v| ids(&v)), Some(vec![7, 8, 9]));
        // A success among the newest three: no.
        assert_eq!(failure_streak(3, &r(&[(9, Failed), (8, Succeeded), (7, Failed)])), None);
        // Not enough runs since it was enabled.
        assert_eq!(failure_streak(3, &r(&[(9, Failed), (8, Failed)])), None);
        // 0 turns it off.
        assert_eq!(failure_streak(0, &three), None);
        assert_eq!(failure_streak(1, &r(&[(9, TimedOut)])).map(|v| ids(&v)), Some(vec![9]));
    }
}
