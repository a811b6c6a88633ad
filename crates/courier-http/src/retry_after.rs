//! Parsing `Retry-After` (RFC 9110 §10.2.3): either a number of seconds or an HTTP-date.

use std::time::{Duration, SystemTime};

/// How long the destination asked to wait, given the header `value` received at `now`, capped at
/// `cap`. A date in the past means "now" (zero). A value that is neither form is ignored (`None`):
/// the computed backoff applies instead.
pub fn parse_retry_after(value: &str, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits; too many of them to fit still means "a very long time", which the cap bounds.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(300);

    #[test]
    fn seconds() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after("7", now, CAP),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after(" 0 ", now, CAP), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400", now, CAP), Some(CAP));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now, CAP),
            Some(CAP)
        );
    }

    #[test]
    fn http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("valid date");
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now, CAP),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now, CAP),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(
            parse_retry_after("Mon, 07 Nov 1994 08:49:37 GMT", now, CAP),
            Some(CAP)
        );
    }

    #[test]
    fn garbage_is_ignored() {
        let now = SystemTime::now();
        for value in ["", "soon", "-5", "1.5", "tomorrow at noon"] {
            assert_eq!(parse_retry_after(value, now, CAP), None, "{value:?}");
        }
    }
}
