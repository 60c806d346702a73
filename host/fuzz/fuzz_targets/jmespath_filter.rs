//! The bundled JMESPath filter's engine (guest-examples/jmespath-filter,
//! natively, with its extra functions): an expression (first line) matched
//! against a payload (the rest).
#![no_main]
use jmespath_filter::eval::Engine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (expr, payload) = text.split_once('\n').unwrap_or((&text, "{}"));
    if expr.len() > 512 || payload.len() > 4096 {
        return;
    }
    let verdicts = Engine::global().matches(payload, &[expr]);
    assert_eq!(verdicts.len(), 1);
});
