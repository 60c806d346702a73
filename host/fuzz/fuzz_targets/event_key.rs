//! Event-key derivation: a custom source's expression (first line) on a
//! payload (the rest), and the GitHub rule on the same payload.
#![no_main]
use automation_host::events::keys::{MAX_KEY_BYTES, custom_key, github_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (expr, payload) = text.split_once('\n').unwrap_or((&text, "{}"));
    let Ok(payload) = serde_json::from_str::<serde_json::Value>(payload) else { return };
    if let Ok(Some(key)) = custom_key(expr, &payload) {
        assert!(key.len() <= MAX_KEY_BYTES);
    }
    let _ = github_key(Some(expr), &payload);
    let _ = github_key(None, &payload);
});
