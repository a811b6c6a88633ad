//! PostgreSQL URL helpers shared by the binary, the tests, the chaos runs and the benches.

/// `server` with its database name replaced by `database` (query parameters kept): how scratch and
/// per-test databases are reached on the same server.
pub fn with_database(server: &str, database: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// The URL with its password hidden, for printing.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// `url` pointed at `address` (`host:port`) instead of its own host and port, credentials, database and
/// query kept: how the chaos harness puts a proxy between courier and the server.
pub fn with_address(url: &str, address: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    format!(
        "{}{}{address}{}",
        &url[..authority_start],
        &authority[..host_start],
        &rest[authority_len..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_name_only() {
        assert_eq!(
            with_database("postgres://u:p@h:1/courier", "t1"),
            "postgres://u:p@h:1/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1", "t1"),
            "postgres://u:p@h:1/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/x?sslmode=disable", "t1"),
            "postgres://u:p@h:1/t1?sslmode=disable"
        );
    }

    #[test]
    fn replaces_the_host_and_port_only() {
        assert_eq!(
            with_address("postgres://u:p@h:1/db?sslmode=disable", "127.0.0.1:9"),
            "postgres://u:p@127.0.0.1:9/db?sslmode=disable"
        );
        assert_eq!(
            with_address("postgres://h:1/db", "127.0.0.1:9"),
            "postgres://127.0.0.1:9/db"
        );
        assert_eq!(
            with_address("postgres://u@h", "127.0.0.1:9"),
            "postgres://u@127.0.0.1:9"
        );
    }

    #[test]
    fn hides_the_password() {
        assert_eq!(
            redact("postgres://courier:secret@h:1/db"),
            "postgres://courier:***@h:1/db"
        );
        assert_eq!(redact("postgres://h:1/db"), "postgres://h:1/db");
    }
}
