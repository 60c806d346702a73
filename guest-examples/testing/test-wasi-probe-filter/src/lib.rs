//! A probing filter: every `matches` call tries, through the Rust standard
//! library, everything a plugin must not be able to do on this host, and
//! reports what it got.
//!
//! Its WASI imports (sockets, filesystem, environment, stdin) are what a
//! language runtime brings in by default; the host must *load* it, and
//! every attempt must fail inside the guest. The expression is an address
//! (`127.0.0.1:PORT`) the test listens on, so the test can also see that no
//! connection arrived.
//!
//! Verdict: an `internal` error starting `LEAKED` that names whatever
//! worked, else an `unavailable` error listing each refusal.

mod bindings {
    //! Generated from the host's WIT package.
    #![allow(missing_docs, unreachable_pub)]

    wit_bindgen::generate!({ path: "../../../wit", world: "filter-plugin" });
}

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};

use bindings::automation::plugin::types::{Error, Event};
use bindings::exports::automation::plugin::filter::Guest;

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Probe;

/// Each attempt: what it tried, and `Ok(what it got)` if it worked.
fn attempts(addr: &str) -> Vec<(&'static str, Result<String, String>)> {
    let mut stdin = [0u8; 64];
    vec![
        ("tcp connect", TcpStream::connect(addr).map(|s| format!("{:?}", s.peer_addr())).map_err(|e| e.to_string())),
        ("udp bind", UdpSocket::bind("0.0.0.0:0").map(|s| format!("{:?}", s.local_addr())).map_err(|e| e.to_string())),
        (
            "name lookup",
            ("localhost", 80)
                .to_socket_addrs()
                .map(|a| format!("{:?}", a.collect::<Vec<_>>()))
                .map_err(|e| e.to_string()),
        ),
        ("read /", std::fs::read_dir("/").map(|d| format!("{} entries", d.count())).map_err(|e| e.to_string())),
        (
            "read /etc/passwd",
            std::fs::read("/etc/passwd").map(|b| format!("{} bytes", b.len())).map_err(|e| e.to_string()),
        ),
        ("write /tmp", std::fs::write("/tmp/probe", b"x").map(|()| "written".to_owned()).map_err(|e| e.to_string())),
        (
            "environment",
            match std::env::vars().map(|(k, _)| k).collect::<Vec<_>>() {
                v if v.is_empty() => Err("no variables".to_owned()),
                v => Ok(v.join(",")),
            },
        ),
        (
            "arguments",
            match std::env::args().collect::<Vec<_>>() {
                v if v.is_empty() => Err("no arguments".to_owned()),
                v => Ok(v.join(" ")),
            },
        ),
        (
            "stdin",
            match std::io::stdin().read(&mut stdin) {
                Ok(0) => Err("end of file".to_owned()),
                Ok(n) => Ok(format!("{n} bytes")),
                Err(e) => Err(e.to_string()),
            },
        ),
    ]
}

impl Guest for Probe {
    fn validate(_expression: String) -> Result<(), Error> {
        Ok(())
    }

    fn matches(_event: Event, expressions: Vec<String>) -> Vec<Result<bool, Error>> {
        expressions
            .iter()
            .map(|addr| {
                let results = attempts(addr);
                let leaked: Vec<String> = results
                    .iter()
                    .filter_map(|(what, r)| r.as_ref().ok().map(|got| format!("{what}: {got}")))
                    .collect();
                if leaked.is_empty() {
                    let refusals: Vec<String> =
                        results.iter().map(|(what, r)| format!("{what}: {}", r.as_ref().unwrap_err())).collect();
                    Err(Error::Unavailable(format!("all refused; {}", refusals.join("; "))))
                } else {
                    Err(Error::Internal(format!("LEAKED {}", leaked.join("; "))))
                }
            })
            .collect()
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(Probe with_types_in bindings);
