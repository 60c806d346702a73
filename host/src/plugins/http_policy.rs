//! Where a plugin granted `http` may connect: the decisions, without I/O.
//!
//! A grant lists entries `host`, `host:port`, `scheme://host` or
//! `scheme://host:port` (an IPv6 host in brackets). A request is permitted
//! when an entry names its host, and its scheme and port if the entry gives
//! them. The address it connects to is checked after resolution, at connect
//! time: a name may only reach public addresses, so a granted name that
//! resolves (or is re-pointed, DNS rebinding) to loopback, a private
//! network, link-local or a cloud metadata address is refused. To reach
//! such an address the operator lists the address itself.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One allow-list entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `Some(true)` for https only, `Some(false)` for http only.
    pub https: Option<bool>,
    /// The host, lowercase, IPv6 without brackets.
    pub host: String,
    /// The port, if the entry names one.
    pub port: Option<u16>,
}

impl Entry {
    /// Parses an entry; `None` for one that is not a host (it permits nothing).
    pub fn parse(text: &str) -> Option<Entry> {
        let text = text.trim().to_ascii_lowercase();
        let (https, rest) = if let Some(r) = text.strip_prefix("https://") {
            (Some(true), r.to_owned())
        } else if let Some(r) = text.strip_prefix("http://") {
            (Some(false), r.to_owned())
        } else {
            (None, text)
        };
        let rest = rest.strip_suffix('/').unwrap_or(&rest);
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return None;
        }
        let (host, port) = split_host_port(rest)?;
        Some(Entry { https, host, port })
    }

    /// The address this entry names literally, if its host is an address.
    pub fn literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    fn permits(&self, https: bool, host: &str, port: u16) -> bool {
        self.host == host && self.https.is_none_or(|h| h == https) && self.port.is_none_or(|p| p == port)
    }
}

/// What both a manifest's entries and a grant's allow: for each pair naming
/// one host, the narrower of the two when one covers the other (a bare host
/// covers any scheme and port). Entries that do not parse allow nothing.
pub fn intersect(asked: &BTreeSet<String>, granted: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for a in asked {
        let Some(ea) = Entry::parse(a) else { continue };
        for g in granted {
            let Some(eg) = Entry::parse(g) else { continue };
            if ea.host != eg.host {
                continue;
            }
            if ea.covers(&eg) {
                out.insert(g.trim().to_ascii_lowercase());
            } else if eg.covers(&ea) {
                out.insert(a.trim().to_ascii_lowercase());
            }
        }
    }
    out
}

impl Entry {
    /// Whether every request `other` permits, `self` permits too.
    fn covers(&self, other: &Entry) -> bool {
        self.host == other.host
            && self.https.is_none_or(|h| other.https == Some(h))
            && self.port.is_none_or(|p| other.port == Some(p))
    }
}

/// `host[:port]` or `[v6][:port]`, the host lowercase without brackets.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_owned(), Some(port.parse().ok()?))),
        Some(_) => Some((s.to_owned(), None)), // a bare IPv6 address
        None => Some((s.to_owned(), None)),
    }
}

/// The request's host as the URI gives it, normalised like an entry's.
pub fn normalise_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// The first entry of `entries` that permits this request.
pub fn permitting(entries: &BTreeSet<String>, https: bool, host: &str, port: u16) -> Option<Entry> {
    let host = normalise_host(host);
    entries.iter().filter_map(|e| Entry::parse(e)).find(|e| e.permits(https, &host, port))
}

/// Whether a connection permitted by `entry` may go to `ip`: the address
/// the entry names, or, for a name, any public address.
pub fn address_permitted(entry: &Entry, ip: IpAddr) -> bool {
    match entry.literal() {
        Some(literal) => canonical(literal) == canonical(ip),
        None => !is_internal(ip),
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback, private, link-local (cloud metadata is 169.254.169.254 and
/// fd00:ec2::254), carrier-grade NAT, unspecified, broadcast, multicast and
/// documentation ranges: addresses a name granted to a plugin must not
/// lead to.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, carrier-grade NAT
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // 192.0.0.0/24, protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, fc00::/7 (fd00:ec2::254 included)
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64: may map to internal v4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[&str]) -> BTreeSet<String> {
        entries.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn entries_name_host_and_optionally_scheme_and_port() {
        let e = set(&["api.example.com", "https://hooks.example.org:8443", "http://10.0.0.5:8000", "[::1]:9000"]);
        assert!(permitting(&e, true, "api.example.com", 443).is_some());
        assert!(permitting(&e, false, "API.example.com", 8080).is_some(), "a bare host allows any scheme and port");
        assert!(permitting(&e, true, "hooks.example.org", 8443).is_some());
        assert!(permitting(&e, false, "hooks.example.org", 8443).is_none(), "scheme must match");
        assert!(permitting(&e, true, "hooks.example.org", 443).is_none(), "port must match");
        assert!(permitting(&e, false, "10.0.0.5", 8000).is_some());
        assert!(permitting(&e, false, "[::1]", 9000).is_some());
        assert!(permitting(&e, false, "evil.example.com", 80).is_none());
        assert!(permitting(&e, true, "api.example.com.evil.org", 443).is_none());
        for bad in ["", "http://", "a/b", "user@host", "host:notaport", "[::1"] {
            assert!(Entry::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn grants_narrow_what_manifests_ask_and_never_widen_it() {
        let asked = set(&["127.0.0.1", "https://api.example.com", "localhost"]);
        let granted = set(&["http://127.0.0.1:8000", "api.example.com", "other.org"]);
        assert_eq!(intersect(&asked, &granted), set(&["http://127.0.0.1:8000", "https://api.example.com"]));
        assert_eq!(intersect(&set(&["https://a.org:1"]), &set(&["http://a.org:1"])), BTreeSet::new());
    }

    #[test]
    fn names_reach_only_public_addresses_and_literals_only_themselves() {
        let name = Entry::parse("agent.example.com").unwrap();
        for internal in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(!address_permitted(&name, ip), "{internal} reached through a name");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(address_permitted(&name, public.parse().unwrap()), "{public}");
        }
        let literal = Entry::parse("http://127.0.0.1:8000").unwrap();
        assert!(address_permitted(&literal, "127.0.0.1".parse().unwrap()));
        assert!(address_permitted(&literal, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!address_permitted(&literal, "127.0.0.2".parse().unwrap()));
        assert!(!address_permitted(&literal, "93.184.216.34".parse().unwrap()));
    }
}
