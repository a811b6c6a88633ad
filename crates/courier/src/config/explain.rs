//! A refused configuration explained as one line: the key, where its value came from (`file:line:column`
//! for the file, the variable for the environment, or "the default"), what serde or the validation said,
//! and what to write instead with an example.

use courier_kafka::KafkaConfig;

/// Where the configuration's values came from: the file (with its text, to point at a line) or the
/// environment variables layered over it.
pub(super) struct Source<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    pub(super) overrides: &'a [(Vec<String>, String)],
}

impl Source<'_> {
    /// A value that does not fit its key, as one line: the key, where the value came from (file:line:column
    /// or the environment variable), what serde said, and what to write instead with an example.
    pub(super) fn explain(
        &self,
        layered: &toml::Value,
        error: &serde_path_to_error::Error<toml::de::Error>,
    ) -> String {
        use serde_path_to_error::Segment;
        let path: Vec<String> = error
            .path()
            .iter()
            .filter_map(|segment| match segment {
                Segment::Map { key } => Some(key.clone()),
                Segment::Seq { index } => Some(index.to_string()),
                Segment::Enum { variant } => Some(variant.clone()),
                Segment::Unknown => None,
            })
            .collect();
        let key = if path.is_empty() {
            "the top level".to_owned()
        } else {
            path.join(".")
        };
        let message = error.inner().message().trim().to_owned();
        let variable = self
            .overrides
            .iter()
            .rev()
            .find(|(set, _)| *set == path)
            .map(|(_, variable)| variable.as_str());
        let (source, assign) = match variable {
            Some(variable) => (
                format!("environment variable {variable}"),
                format!("{variable}="),
            ),
            None => {
                let leaf = path.last().map_or("key", String::as_str);
                let at = match locate(self.text, &path) {
                    Some(((line, column), _)) => format!("{}:{line}:{column}", self.file),
                    None => self.file.to_owned(),
                };
                (at, format!("{leaf} = "))
            }
        };
        let raw = lookup(layered, &path);
        let quote = |example: &str| {
            if variable.is_some() {
                example.to_owned()
            } else {
                format!("\"{example}\"")
            }
        };
        let bare_number = match raw {
            Some(toml::Value::Integer(_) | toml::Value::Float(_)) => true,
            Some(toml::Value::String(s)) => s.trim().parse::<f64>().is_ok(),
            _ => false,
        };
        let hint = if message.contains("time unit needed")
            || (message.contains("expected a duration") && bare_number)
        {
            let number = match raw {
                Some(toml::Value::Integer(n)) => n.to_string(),
                Some(toml::Value::Float(n)) => n.to_string(),
                Some(toml::Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
                _ => "5".to_owned(),
            };
            format!(
                "add a unit, e.g. {assign}{} (ms, s, m and h work)",
                quote(&format!("{number}s"))
            )
        } else if message.contains("expected a duration")
            || DURATION_ERRORS.iter().any(|m| message.contains(m))
        {
            format!(
                "write a duration with its unit, e.g. {assign}{} or {assign}{}",
                quote("10s"),
                quote("500ms")
            )
        } else if INTEGER_TYPES
            .iter()
            .any(|t| message.ends_with(&format!("expected {t}")))
        {
            format!("write a whole number, e.g. {assign}8")
        } else if message.contains("expected a boolean") {
            format!("write true or false, e.g. {assign}true")
        } else if message.contains("expected a string") {
            format!("write text, e.g. {assign}{}", quote("..."))
        } else {
            "courier.example.toml documents every key".to_owned()
        };
        format!("{key} ({source}): {message}; {hint}")
    }
}

impl Source<'_> {
    /// librdkafka's refusal of the client configuration, blaming the `[kafka.extra]` property it names
    /// (the longest one its message contains) and where that property was set.
    pub(super) fn explain_extra(&self, kafka: &KafkaConfig, error: &str) -> String {
        let blamed = kafka
            .extra
            .keys()
            .filter(|key| error.contains(key.as_str()))
            .max_by_key(|key| key.len());
        let Some(key) = blamed else {
            return format!("kafka ({}): {error}", self.file);
        };
        let path = ["kafka".to_owned(), "extra".to_owned(), key.clone()];
        let from = match self
            .overrides
            .iter()
            .rev()
            .find(|(set, _)| set[..] == path[..])
        {
            Some((_, variable)) => format!("environment variable {variable}"),
            None => match locate(self.text, &path) {
                Some(((line, column), true)) => format!("{}:{line}:{column}", self.file),
                _ => self.file.to_owned(),
            },
        };
        format!(
            "kafka.extra.\"{key}\" ({from}): {error}; [kafka.extra] takes librdkafka's property names \
             and values (librdkafka's CONFIGURATION.md lists them)"
        )
    }

    /// Where each key a validation message names got its value, e.g. `worker.lease_ttl: environment
    /// variable COURIER__WORKER__LEASE_TTL; worker.renew_every: courier.toml:8:15`, or `None` when the
    /// message names no key. Validation messages start from the key they are about.
    pub(super) fn attribute(&self, message: &str) -> Option<String> {
        const SECTIONS: &[&str] = &[
            "store",
            "kafka",
            "worker",
            "metrics",
            "admin",
            "status",
            "log",
            "destinations",
            "routes",
        ];
        let mut seen: Vec<&str> = Vec::new();
        let tokens = message
            .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .map(|token| token.trim_end_matches('.'))
            .filter(|token| {
                token
                    .split_once('.')
                    .is_some_and(|(section, _)| SECTIONS.contains(&section))
            });
        for token in tokens {
            // `[destinations.x]` names a section the message suggests writing, not a value set somewhere.
            if !seen.contains(&token) && !message.contains(&format!("[{token}]")) {
                seen.push(token);
            }
        }
        let sources: Vec<String> = seen
            .into_iter()
            .map(|key| {
                let path: Vec<String> = key.split('.').map(str::to_owned).collect();
                let from = match self.overrides.iter().rev().find(|(set, _)| *set == path) {
                    Some((_, variable)) => format!("environment variable {variable}"),
                    None => match locate(self.text, &path) {
                        Some(((line, column), true)) => format!("{}:{line}:{column}", self.file),
                        _ => "the default".to_owned(),
                    },
                };
                format!("{key}: {from}")
            })
            .collect();
        (!sources.is_empty()).then(|| sources.join("; "))
    }
}

/// What `humantime` says about a duration it cannot read (through `humantime_serde`).
const DURATION_ERRORS: &[&str] = &[
    "unknown time unit",
    "expected number at",
    "invalid character at",
    "number is too large",
    "value was empty",
];

/// The integer types serde names in "expected ..." messages.
const INTEGER_TYPES: &[&str] = &[
    "usize", "u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "isize",
];

/// The value at `path` of the layered configuration.
fn lookup<'v>(value: &'v toml::Value, path: &[String]) -> Option<&'v toml::Value> {
    path.iter().try_fold(value, |current, key| match current {
        toml::Value::Table(table) => table.get(key),
        toml::Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Line and column (1-based) in `text` of the value at `path`, or of the deepest table on it that the
/// file has (a missing key is reported at its section); `true` when the file has `path` itself.
fn locate(text: &str, path: &[String]) -> Option<((usize, usize), bool)> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut span = None;
    let mut found = 0;
    for key in path {
        let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref() == key) else {
            break;
        };
        span = Some(value.span());
        found += 1;
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    let offset = span?.start;
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(offset, |newline| offset - newline - 1)
        + 1;
    Some(((line, column), found == path.len()))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, MINIMAL};

    #[test]
    fn an_unknown_kafka_extra_property_is_named_with_its_line() {
        let text = MINIMAL.replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\n        [kafka.extra]\n        \"socket.keepalive.enable\" = \"true\"\n        \"fetch.wait.max.msec\" = \"5\"",
        );
        let message = format!("{:#}", parse(&text, &[]).expect_err("unknown property"));
        assert!(
            message.contains("kafka.extra.\"fetch.wait.max.msec\" (courier.toml:8:")
                && message.contains("CONFIGURATION.md"),
            "{message}"
        );
    }

    #[test]
    fn kafka_security_errors_name_the_key_and_where_it_was_set() {
        let message = format!(
            "{:#}",
            parse(MINIMAL, &[("KAFKA_BROKERS", "k1:9092,k2")]).expect_err("k2 has no port")
        );
        assert!(
            message.contains("\"k2\", which is not host:port")
                && message.contains("kafka.brokers: environment variable KAFKA_BROKERS"),
            "{message}"
        );
        let text = MINIMAL.replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\n        security_protocol = \"sasl_ssl\"\n        sasl_password = \"hunter2\"",
        );
        let message = format!(
            "{:#}",
            parse(&text, &[]).expect_err("a password in the file")
        );
        assert!(
            message.contains("kafka.sasl_password is set")
                && message.contains("kafka.sasl_password: courier.toml:7:")
                && !message.contains("hunter2"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_environment_value_names_the_variable_not_the_file() {
        let err = parse(MINIMAL, &[("COURIER__WORKER__DELIVERY_TASKS", "abc")])
            .expect_err("abc is not a number");
        let message = format!("{err:#}");
        assert!(
            message.contains(
                "worker.delivery_tasks (environment variable COURIER__WORKER__DELIVERY_TASKS)"
            ) && message.contains("COURIER__WORKER__DELIVERY_TASKS=8")
                && !message.contains("courier.toml"),
            "{message}"
        );
        let err = parse(MINIMAL, &[("COURIER__DESTINATIONS__HOOKS__TIMEOUT", "5")])
            .expect_err("5 has no unit");
        let message = format!("{err:#}");
        assert!(
            message.contains("destinations.hooks.timeout (environment variable COURIER__DESTINATIONS__HOOKS__TIMEOUT)")
                && message.contains("add a unit, e.g. COURIER__DESTINATIONS__HOOKS__TIMEOUT=5s"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_file_value_names_the_key_its_line_and_column_and_an_example() {
        let text = format!("{MINIMAL}\n[worker]\ndelivery_tasks = \"four\"\n");
        let err = parse(&text, &[]).expect_err("four is not a number");
        let message = format!("{err:#}");
        assert!(
            message.contains("worker.delivery_tasks (courier.toml:13:18)")
                && message.contains("expected usize")
                && message.contains("write a whole number, e.g. delivery_tasks = 8"),
            "{message}"
        );

        let text = MINIMAL.replace(
            "url = \"http://127.0.0.1:8080/hooks\"",
            "url = \"http://127.0.0.1:8080/hooks\"\n        timeout = \"5\"",
        );
        let err = parse(&text, &[]).expect_err("5 has no unit");
        let message = format!("{err:#}");
        assert!(
            message.contains("destinations.hooks.timeout (courier.toml:8:19)")
                && message.contains("add a unit, e.g. timeout = \"5s\""),
            "{message}"
        );

        let text = MINIMAL.replace("[routes.orders]", "[routes.orders]\nrange_size = true");
        let message = format!("{:#}", parse(&text, &[]).expect_err("not a number"));
        assert!(
            message.contains("routes.orders.range_size (courier.toml:9:14)")
                && message.contains("range_size = 8"),
            "{message}"
        );
    }

    #[test]
    fn a_value_refused_by_validation_names_where_each_key_it_names_was_set() {
        let text = format!("{MINIMAL}\n[worker]\nrenew_every = \"15s\"\n");
        let err = parse(&text, &[("COURIER__WORKER__LEASE_TTL", "20s")]).expect_err("too short");
        let message = format!("{err:#}");
        assert!(
            message.contains("worker.lease_ttl: environment variable COURIER__WORKER__LEASE_TTL")
                && message.contains("worker.renew_every: courier.toml:13:15"),
            "{message}"
        );
    }
}
