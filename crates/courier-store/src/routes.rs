//! A route's identity in the store: its name, topic and the delivery settings every worker serving it must
//! share (destination URL, format, ordering, range size, ...), and the deliberate way to change them.
//!
//! Two workers that disagree on where or how a route is delivered would split its messages between them
//! without a word (issue 11, item 7). So the first worker to start a route records its settings, and every
//! later worker compares its own against them and refuses to start on a difference, unless the operator
//! accepts the change on purpose ([`Store::update_route_settings`], `courier routes update`, or
//! `courier run --accept-route-changes`). Runbook: docs/runbooks/route-settings-changed.md.
//!
//! Settings are an open map of key -> text, so a new key (say a poison policy) is one more entry where the
//! worker builds them: a route recorded without that key adopts the first value a worker brings, with no
//! migration, and a stored key an older worker does not know is left alone. Values reach the store
//! already redacted: no secret is ever recorded or printed.

use std::collections::BTreeMap;
use std::fmt;

use courier_core::{Offset, Partition};

use crate::changes::{Change, Kind};
use crate::error::{Result, StoreError};
use crate::pool::Store;
use crate::protocol::RouteSpec;
use crate::query::{invalid, params};

/// A route's delivery settings: key -> value as text (secrets already redacted), compared key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSettings(BTreeMap<String, String>);

impl RouteSettings {
    /// Adds or replaces `key`.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What recording `configured` over `self` (the recorded settings) would change: keys whose values
    /// differ, and keys not recorded yet. Keys only `self` has are kept, so not listed.
    pub fn changes_to(&self, configured: &RouteSettings) -> Vec<SettingChange> {
        configured
            .0
            .iter()
            .filter(|(key, value)| self.0.get(*key) != Some(*value))
            .map(|(key, value)| SettingChange {
                key: key.clone(),
                recorded: self.0.get(key).cloned(),
                configured: value.clone(),
            })
            .collect()
    }

    fn merged(&self, configured: &RouteSettings) -> RouteSettings {
        let mut merged = self.clone();
        merged
            .0
            .extend(configured.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        merged
    }

    fn to_json(&self) -> String {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
        .to_string()
    }

    /// Reads the `settings` column: a JSON object (a value that is not text, written by hand, is compared
    /// as its JSON text).
    fn from_json(operation: &'static str, text: &str) -> Result<Self> {
        let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            invalid(
                operation,
                format!(
                    "courier_routes.settings is not a JSON object of settings ({e}): {text}. \
                     Fix the row by hand or record the settings again with `courier routes update`"
                ),
            )
        })?;
        Ok(Self(
            map.into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect(),
        ))
    }
}

impl FromIterator<(String, String)> for RouteSettings {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// One setting as recorded and as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingChange {
    pub key: String,
    /// `None`: the store had no value for the key (a route recorded before it existed).
    pub recorded: Option<String>,
    pub configured: String,
}

impl fmt::Display for SettingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.recorded {
            Some(recorded) => write!(
                f,
                "{}: recorded {recorded:?}, configured {:?}",
                self.key, self.configured
            ),
            None => write!(
                f,
                "{}: not recorded, configured {:?}",
                self.key, self.configured
            ),
        }
    }
}

/// Lists changes for an error message or a log line.
pub fn describe_changes(changes: &[SettingChange]) -> String {
    changes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What registering a route did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    /// This call created the route.
    pub created: bool,
    /// Settings this call wrote over an existing route's record: keys it had no value for (adopted), and,
    /// when changes were accepted, keys whose value it replaced.
    pub recorded: Vec<SettingChange>,
}

/// A route as recorded, for `courier routes list`.
#[derive(Debug, Clone)]
pub struct RouteRecord {
    pub name: String,
    pub topic: String,
    pub destination: String,
    /// `None`: recorded before settings were, and no worker has started it since.
    pub settings: Option<RouteSettings>,
    pub paused: bool,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// When the settings were last recorded or changed, RFC 3339, UTC.
    pub updated_at: String,
}

impl Store {
    /// Records a route, or checks that the recorded one still reads the same topic. Progress is offsets
    /// of one topic: pointing an existing route at another topic would deliver the wrong messages.
    ///
    /// `first_partitions` are where a **new** route starts (its `start` setting applied to the partitions
    /// the topic has now), registered in the same statement as the route itself, so no other worker can
    /// see the route without them. For a route already recorded they are ignored: `start` decides only
    /// where a route begins, and partitions added to the topic later start at their log start offset
    /// ([`Store::ensure_partitions`]). Returns whether this call created the route.
    ///
    /// No delivery settings are compared: workers call [`Store::register_route`], which does.
    pub async fn ensure_route(
        &self,
        route: &RouteSpec,
        first_partitions: &[(Partition, Offset)],
    ) -> Result<bool> {
        let registration = self
            .register_route(route, &RouteSettings::default(), first_partitions, false)
            .await?;
        Ok(registration.created)
    }

    /// Registers partitions of a route with the offset each starts from. Known partitions keep their
    /// progress: the initial offset only matters the first time.
    pub async fn ensure_partitions(
        &self,
        route: &str,
        initial: &[(Partition, Offset)],
    ) -> Result<()> {
        const OP: &str = "ensure partitions";
        let (partitions, offsets) = partition_offsets(OP, initial)?;
        self.execute(
            OP,
            "INSERT INTO courier_partitions (route, partition, initial_offset, frontier, watermark)
             SELECT $1, p, o, o, o FROM unnest($2::int[], $3::bigint[]) AS t (p, o)
             ON CONFLICT (route, partition) DO NOTHING",
            params![route.to_owned(), partitions, offsets],
        )
        .await
        .map(drop)
    }

    /// Records a route with its settings, or checks an existing one against them.
    ///
    /// A new route is created with `first_partitions` (where it starts; see [`Store::ensure_route`]) and
    /// `settings`. An existing route must read the same topic, and its recorded settings must equal
    /// `settings` on every key both have, or this fails with [`StoreError::RouteSettingsChanged`] naming
    /// each difference, unless `accept_changes`, which records `settings` instead. Keys the route has no
    /// value for yet are recorded from `settings` (a route recorded before a key existed adopts the first
    /// worker's value). The row is locked while it is compared, so two workers starting at once cannot
    /// both record different settings.
    pub async fn register_route(
        &self,
        route: &RouteSpec,
        settings: &RouteSettings,
        first_partitions: &[(Partition, Offset)],
        accept_changes: bool,
    ) -> Result<Registration> {
        let registration = self
            .settle_route(route, settings, Some(first_partitions), accept_changes)
            .await?;
        registration.ok_or_else(|| {
            invalid(
                "register route",
                format!("route {:?} was neither found nor created", route.name),
            )
        })
    }

    /// Records `settings` as the route's, on purpose (`courier routes update`): returns what changed, or
    /// `None` when no worker has recorded the route yet (the first one records its own settings). The
    /// topic is not a setting: a route's progress is offsets of its topic, so a different topic is refused.
    pub async fn update_route_settings(
        &self,
        route: &RouteSpec,
        settings: &RouteSettings,
    ) -> Result<Option<Vec<SettingChange>>> {
        Ok(self
            .settle_route(route, settings, None, true)
            .await?
            .map(|registration| registration.recorded))
    }

    /// [`Store::register_route`] and [`Store::update_route_settings`] in one transaction: creates the route
    /// when `first_partitions` is given, locks its row, compares, records.
    async fn settle_route(
        &self,
        route: &RouteSpec,
        settings: &RouteSettings,
        first_partitions: Option<&[(Partition, Offset)]>,
        accept_changes: bool,
    ) -> Result<Option<Registration>> {
        const OP: &str = "register route";
        let route = route.clone();
        let settings = settings.clone();
        let create = first_partitions.is_some();
        let (partitions, offsets) = partition_offsets(OP, first_partitions.unwrap_or_default())?;
        self.transaction(OP, move |tx| {
            Box::pin(async move {
                let initial = (!settings.is_empty()).then(|| settings.to_json());
                let created = if create {
                    // ON CONFLICT DO NOTHING waits for a concurrent insert of the same name to settle, so
                    // the SELECT below sees whichever worker recorded the route first.
                    tx.query_one(
                        "WITH route AS (
                             INSERT INTO courier_routes (name, topic, destination, settings)
                             VALUES ($1, $2, $3, $4::text::jsonb)
                             ON CONFLICT (name) DO NOTHING
                             RETURNING name),
                         first AS (
                             INSERT INTO courier_partitions (route, partition, initial_offset, frontier, watermark)
                             SELECT $1, p, o, o, o FROM unnest($5::int[], $6::bigint[]) AS t (p, o)
                             WHERE EXISTS (SELECT 1 FROM route)
                             ON CONFLICT (route, partition) DO NOTHING)
                         SELECT EXISTS (SELECT 1 FROM route)",
                        &[&route.name, &route.topic, &route.destination, &initial, &partitions, &offsets],
                    )
                    .await?
                    .get::<_, bool>(0)
                } else {
                    false
                };
                let Some(row) = tx
                    .query_opt(
                        "SELECT topic, destination, settings::text FROM courier_routes WHERE name = $1 FOR UPDATE",
                        &[&route.name],
                    )
                    .await?
                else {
                    return Ok(None);
                };
                let recorded_topic: String = row.get(0);
                if recorded_topic != route.topic {
                    return Err(invalid(
                        OP,
                        format!(
                            "route {:?} is recorded with topic {recorded_topic:?} but configured with topic {:?}; its progress is \
                             offsets of {recorded_topic:?} and would be wrong for another topic. Give the new pairing a new route name.",
                            route.name, route.topic
                        ),
                    ));
                }
                let recorded_destination: String = row.get(1);
                let recorded = match row.get::<_, Option<String>>(2) {
                    Some(text) => RouteSettings::from_json(OP, &text)?,
                    None => RouteSettings::default(),
                };
                let changes = recorded.changes_to(&settings);
                let differing: Vec<SettingChange> =
                    changes.iter().filter(|c| c.recorded.is_some()).cloned().collect();
                if !differing.is_empty() && !accept_changes {
                    return Err(StoreError::RouteSettingsChanged {
                        route: route.name,
                        changes: differing,
                    });
                }
                if !changes.is_empty() || recorded_destination != route.destination {
                    tx.execute(
                        "UPDATE courier_routes
                         SET destination = $2, settings = $3::text::jsonb,
                             updated_at = CASE WHEN $4 THEN now() ELSE updated_at END
                         WHERE name = $1",
                        &[
                            &route.name,
                            &route.destination,
                            &recorded.merged(&settings).to_json(),
                            &!changes.is_empty(),
                        ],
                    )
                    .await?;
                }
                // "What changed?", recorded with the change itself.
                if created {
                    let change = Change::new(
                        Kind::RouteCreated,
                        format!("route {} recorded: topic {:?} -> destination {:?}", route.name, route.topic, route.destination),
                    );
                    crate::changes::insert(tx, &change.route(&route.name).destination(&route.destination)).await?;
                } else if !changes.is_empty() {
                    let how = if !create {
                        "by `courier routes update`"
                    } else if differing.is_empty() {
                        "from the first worker to bring them (not recorded before)"
                    } else {
                        "by a worker started with --accept-route-changes"
                    };
                    let change = Change::new(
                        Kind::RouteSettingsChanged,
                        format!("route {} settings recorded {how}: {}", route.name, describe_changes(&changes)),
                    );
                    crate::changes::insert(tx, &change.route(&route.name).destination(&route.destination)).await?;
                }
                Ok(Some(Registration {
                    created,
                    recorded: if created { Vec::new() } else { changes },
                }))
            })
        })
        .await
    }

    /// Every recorded route with its settings, by name.
    pub async fn routes(&self) -> Result<Vec<RouteRecord>> {
        const OP: &str = "read routes";
        let rows = self
            .query(
                OP,
                "SELECT name, topic, destination, settings::text, paused,
                        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM courier_routes ORDER BY name",
                params![],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(RouteRecord {
                    name: row.get(0),
                    topic: row.get(1),
                    destination: row.get(2),
                    settings: row
                        .get::<_, Option<String>>(3)
                        .map(|text| RouteSettings::from_json(OP, &text))
                        .transpose()?,
                    paused: row.get(4),
                    created_at: row.get(5),
                    updated_at: row.get(6),
                })
            })
            .collect()
    }
}

/// `(partition, offset)` pairs as the two arrays an `unnest` takes; a negative offset is refused.
pub(crate) fn partition_offsets(
    operation: &'static str,
    pairs: &[(Partition, Offset)],
) -> Result<(Vec<i32>, Vec<i64>)> {
    if let Some((partition, offset)) = pairs.iter().find(|(_, o)| *o < 0) {
        return Err(invalid(
            operation,
            format!("partition {partition}: initial offset {offset} is negative"),
        ));
    }
    Ok(pairs.iter().copied().unzip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> RouteSettings {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn changes_list_differing_and_new_keys_but_not_keys_only_recorded() {
        let recorded = settings(&[("a", "1"), ("b", "2"), ("old", "x")]);
        let configured = settings(&[("a", "1"), ("b", "3"), ("new", "y")]);
        let changes = recorded.changes_to(&configured);
        assert_eq!(
            changes,
            vec![
                SettingChange {
                    key: "b".into(),
                    recorded: Some("2".into()),
                    configured: "3".into()
                },
                SettingChange {
                    key: "new".into(),
                    recorded: None,
                    configured: "y".into()
                },
            ]
        );
        let merged = recorded.merged(&configured);
        assert_eq!(
            merged,
            settings(&[("a", "1"), ("b", "3"), ("new", "y"), ("old", "x")])
        );
    }

    #[test]
    fn settings_round_trip_through_json_and_non_text_values_compare_as_json() {
        let original = settings(&[
            ("destination.url", "http://h/x?a=\"1\""),
            ("range_size", "100"),
        ]);
        let back = RouteSettings::from_json("t", &original.to_json()).expect("valid");
        assert_eq!(back, original);
        let by_hand = RouteSettings::from_json("t", r#"{"range_size": 100}"#).expect("valid");
        assert_eq!(by_hand.get("range_size"), Some("100"));
        assert!(RouteSettings::from_json("t", "[1]").is_err());
    }
}
