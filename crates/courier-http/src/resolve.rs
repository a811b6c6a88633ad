//! Name resolution for destinations: the system resolver, except for the special-use `.invalid` names
//! (RFC 6761 §6.4), which are answered "no such name" at once without asking any DNS server.
//!
//! That is what RFC 6761 asks of resolution libraries, and it lets tests and chaos runs exercise a DNS
//! failure without a single packet leaving the machine.

use std::net::SocketAddr;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The resolver every deliverer's client uses.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Resolver;

/// Whether `host` is in the special-use `.invalid` domain, which never resolves.
pub(crate) fn is_invalid_tld(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "invalid" || host.ends_with(".invalid")
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if is_invalid_tld(&host) {
                return Err(format!("{host:?} is in the special-use .invalid domain (RFC 6761), which never resolves").into());
            }
            // Port 0: the client puts the URL's port in place.
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host:?} resolved to no address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_invalid_domain() {
        assert!(is_invalid_tld("nonexistent.invalid"));
        assert!(is_invalid_tld("a.b.INVALID."));
        assert!(is_invalid_tld("invalid"));
        assert!(!is_invalid_tld("invalid.example.com"));
        assert!(!is_invalid_tld("localhost"));
    }
}
