//! The scheduler: decides when cron automations fire.
//!
//! `cron` is the pure maths (expression + time zone → next fire time).

pub mod cron;
