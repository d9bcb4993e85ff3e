//! Server-side printing (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`): upstream's column
//! sets per resource (priority 1 columns are what `-o wide` adds). Cell functions read the stored JSON.

use jiff::Timestamp;
use serde_json::{Value, json};

pub mod columns;

/// One column as `metav1.TableColumnDefinition`.
#[derive(Clone, Copy, Debug)]
pub struct Col {
    pub name: &'static str,
    pub ty: &'static str,
    pub format: &'static str,
    pub priority: i32,
    pub description: &'static str,
}

pub const fn col(name: &'static str, ty: &'static str, priority: i32, description: &'static str) -> Col {
    let format = if matches!(name.as_bytes(), b"Name" | b"NAME") { "name" } else { "" };
    Col { name, ty, format, priority, description }
}

/// A resource's printer: its columns and a function producing one row's cells.
#[derive(Clone, Copy)]
pub struct TableDef {
    pub columns: &'static [Col],
    pub cells: fn(&Value, Timestamp) -> Vec<Value>,
}

impl TableDef {
    pub const NAME_AGE: TableDef = TableDef { columns: columns::NAME_AGE_COLS, cells: columns::name_age };

    pub fn column_definitions(&self) -> Value {
        Value::Array(
            self.columns
                .iter()
                .map(|c| json!({"name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority}))
                .collect(),
        )
    }

    /// One `TableRow`; `include` is the includeObject parameter (None, Metadata (default), Object).
    pub fn row(&self, obj: &Value, include: Include, now: Timestamp) -> Value {
        let mut row = json!({"cells": (self.cells)(obj, now)});
        match include {
            Include::None => {}
            Include::Object => row["object"] = obj.clone(),
            Include::Metadata => {
                row["object"] = json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
                })
            }
        }
        row
    }

    pub fn table(&self, rows: Vec<Value>, list_meta: Value) -> Value {
        json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": list_meta,
            "columnDefinitions": self.column_definitions(),
            "rows": rows,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(s: Option<&str>) -> Result<Include, String> {
        match s {
            None | Some("") | Some("Metadata") => Ok(Include::Metadata),
            Some("None") => Ok(Include::None),
            Some("Object") => Ok(Include::Object),
            Some(other) => {
                Err(format!("includeObject: Unsupported value: {other:?}: supported values: \"None\", \"Metadata\", \"Object\""))
            }
        }
    }
}

/// Upstream's `duration.HumanDuration`, which kubectl's AGE column shows.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        return if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        let d = h / 24;
        return if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    let y = h / (24 * 365);
    if h < 24 * 365 * 8 {
        let d = (h / 24) % 365;
        return if d == 0 { format!("{y}y") } else { format!("{y}y{d}d") };
    }
    format!("{y}y")
}

/// Age of a timestamp string relative to `now`, or `<unknown>` as upstream.
pub fn age(ts: Option<&str>, now: Timestamp) -> String {
    match ts.and_then(|t| t.parse::<Timestamp>().ok()) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_upstream() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(3 * 86400), "3d");
        assert_eq!(human_duration(30 * 86400), "30d");
    }
}
