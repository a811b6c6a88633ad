//! The environment layered over `courier.toml`: `DATABASE_URL` and `KAFKA_BROKERS`, and
//! `COURIER__SECTION__KEY=value` for any other key, each remembered with the key it set so that an error
//! blames the variable, not the file.

use anyhow::{bail, Context as _};

/// Which key (as its path of table names) each environment variable set, in the order they were set.
pub(super) type Overrides = Vec<(Vec<String>, String)>;

/// Sets the keys the variables of `env` name in `value`, and returns which variable set which key.
pub(super) fn layer(
    value: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<Overrides> {
    let mut overrides: Overrides = Vec::new();
    for (key, raw) in env {
        let path: Vec<String> = match key.as_str() {
            "DATABASE_URL" => vec!["store".into(), "url".into()],
            "KAFKA_BROKERS" => vec!["kafka".into(), "brokers".into()],
            _ => match key.strip_prefix("COURIER__") {
                Some(rest) => rest.split("__").map(str::to_lowercase).collect(),
                None => continue,
            },
        };
        set_path(value, &path, &raw).with_context(|| format!("environment variable {key}"))?;
        overrides.push((path, key));
    }
    Ok(overrides)
}

/// Sets `path` in `table` to `raw`, read as a TOML value when it parses as one (numbers, booleans), as a
/// string otherwise.
fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> anyhow::Result<()> {
    let Some((last, parents)) = path.split_last() else {
        bail!("empty key")
    };
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            _ => bail!("{key} is not a section"),
        };
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, MINIMAL};

    #[test]
    fn environment_overrides_the_file() {
        let config = parse(
            MINIMAL,
            &[
                ("DATABASE_URL", "postgres://x:y@db:5432/c"),
                ("COURIER__WORKER__DELIVERY_TASKS", "3"),
            ],
        )
        .expect("valid");
        assert_eq!(config.store.url, "postgres://x:y@db:5432/c");
        assert_eq!(config.worker.delivery_tasks, 3);
        assert_eq!(config.routes["orders"].name, "orders");
    }
}
