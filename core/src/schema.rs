//! A topic's JSON schema: the typed columns of its hourly Parquet files.
//!
//! A topic with `compact_format = "parquet"` may declare `schema`, a subset of JSON
//! Schema written as a TOML table (`docs/configuration.md`):
//!
//! ```toml
//! [topics.clicks.schema]
//! type = "object"
//! required = ["user"]
//! properties = { user = { type = "string" }, n = { type = "integer" } }
//! ```
//!
//! Each property becomes one column (`string` → UTF-8, `integer` → Int64, `number`
//! → Float64, `boolean` → Boolean), in name order, nullable unless required. Other
//! JSON Schema keywords are refused rather than ignored, so a schema never promises
//! a check that is not made. [`TopicSchema::check`] is what `conduit check` runs;
//! [`TopicSchema::row`] matches one payload against the schema.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Column names the hourly Parquet file always has; no property may take them.
pub const RESERVED_COLUMNS: [&str; 4] = ["payload", "minute", "cluster", "collector"];

/// The only schema type: a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    /// `"object"`.
    Object,
}

/// The JSON type of one property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// A JSON string (Parquet UTF-8).
    String,
    /// A JSON number without a fraction that fits 64 bits signed (Parquet INT64).
    Integer,
    /// Any JSON number (Parquet DOUBLE).
    Number,
    /// `true` or `false` (Parquet BOOLEAN).
    Boolean,
}

impl FieldType {
    /// The JSON Schema name of the type.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Integer => "integer",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
        }
    }
}

/// One property of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Property {
    /// Its JSON type.
    #[serde(rename = "type")]
    pub kind: FieldType,
}

/// A topic's schema (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSchema {
    /// Always `"object"`.
    #[serde(rename = "type")]
    pub kind: ObjectType,
    /// The typed columns, by name.
    pub properties: BTreeMap<String, Property>,
    /// Properties every row must have (non-null).
    #[serde(default)]
    pub required: Vec<String>,
}

/// One value of a row that matched the schema, in property order.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Absent or `null` (only for properties that are not required).
    Null,
    /// A string.
    String(String),
    /// An integer.
    Integer(i64),
    /// A number.
    Number(f64),
    /// A boolean.
    Boolean(bool),
}

impl TopicSchema {
    /// Whether the schema is usable; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.properties.is_empty() {
            return Err("properties is empty: declare at least one typed column".to_owned());
        }
        for name in self.properties.keys() {
            if name.is_empty() {
                return Err("a property has an empty name".to_owned());
            }
            if RESERVED_COLUMNS.contains(&name.as_str()) {
                return Err(format!(
                    "property {name:?} clashes with a column every hourly Parquet file has ({})",
                    RESERVED_COLUMNS.join(", ")
                ));
            }
        }
        for name in &self.required {
            if !self.properties.contains_key(name) {
                return Err(format!(
                    "required names {name:?}, which is not one of the properties ({})",
                    self.properties
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Whether `name` must be present in every row.
    pub fn is_required(&self, name: &str) -> bool {
        self.required.iter().any(|r| r == name)
    }

    /// The values of `payload`'s properties, in property (name) order, or why it
    /// does not match: not a JSON object, a required property missing or null, a
    /// property of another type. Properties not in the schema are allowed.
    pub fn row(&self, payload: &[u8]) -> Result<Vec<FieldValue>, String> {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(payload).map_err(|e| format!("not a json object: {e}"))?;
        self.properties
            .iter()
            .map(|(name, property)| {
                use serde_json::Value;
                let value = match object.get(name) {
                    None | Some(Value::Null) if self.is_required(name) => {
                        return Err(format!("required property {name:?} is missing"))
                    }
                    None | Some(Value::Null) => return Ok(FieldValue::Null),
                    Some(value) => value,
                };
                let typed = match (property.kind, value) {
                    (FieldType::String, Value::String(s)) => Some(FieldValue::String(s.clone())),
                    (FieldType::Integer, Value::Number(n)) => n.as_i64().map(FieldValue::Integer),
                    (FieldType::Number, Value::Number(n)) => n.as_f64().map(FieldValue::Number),
                    (FieldType::Boolean, Value::Bool(b)) => Some(FieldValue::Boolean(*b)),
                    _ => None,
                };
                typed.ok_or_else(|| {
                    format!(
                        "property {name:?} is {}, not {}",
                        json_type(value),
                        property.kind.name()
                    )
                })
            })
            .collect()
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer outside 64 bits signed",
        Value::Number(_) => "a number with a fraction",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Result<TopicSchema, String> {
        let schema: TopicSchema = toml::from_str(text).map_err(|e| e.to_string())?;
        schema.check().map(|()| schema)
    }

    const CLICKS: &str = r#"
        type = "object"
        required = ["user"]
        properties = { user = { type = "string" }, n = { type = "integer" }, score = { type = "number" }, ok = { type = "boolean" } }
    "#;

    #[test]
    fn rows_match_or_say_why_not() {
        let s = schema(CLICKS).unwrap();
        // Columns in name order: n, ok, score, user.
        assert_eq!(
            s.row(br#"{"user":"u1","n":3,"score":1.5,"ok":true,"extra":[1]}"#)
                .unwrap(),
            vec![
                FieldValue::Integer(3),
                FieldValue::Boolean(true),
                FieldValue::Number(1.5),
                FieldValue::String("u1".into())
            ]
        );
        assert_eq!(
            s.row(br#"{"user":"u1","n":null}"#).unwrap(),
            vec![
                FieldValue::Null,
                FieldValue::Null,
                FieldValue::Null,
                FieldValue::String("u1".into())
            ]
        );
        for (payload, reason) in [
            (&br#"{"n":1}"#[..], "required property \"user\" is missing"),
            (br#"{"user":null}"#, "required property \"user\" is missing"),
            (
                br#"{"user":"u","n":"3"}"#,
                "property \"n\" is a string, not integer",
            ),
            (
                br#"{"user":"u","n":1.5}"#,
                "property \"n\" is a number with a fraction, not integer",
            ),
            (br#"{"user":7}"#, "property \"user\" is an integer"),
            (br#"[1,2]"#, "not a json object"),
            (b"plain text", "not a json object"),
        ] {
            let err = s.row(payload).unwrap_err();
            assert!(err.contains(reason), "{err} does not contain {reason}");
        }
    }

    #[test]
    fn bad_schemas_say_what_is_wrong() {
        for (text, expected) in [
            (
                "type = \"array\"\nproperties = {}",
                "unknown variant `array`",
            ),
            (
                "type = \"object\"\nproperties = { a = { type = \"int\" } }",
                "unknown variant `int`",
            ),
            ("type = \"object\"\nproperties = {}", "properties is empty"),
            (
                "type = \"object\"\nproperties = { payload = { type = \"string\" } }",
                "clashes",
            ),
            (
                "type = \"object\"\nrequired = [\"b\"]\nproperties = { a = { type = \"string\" } }",
                "required names \"b\"",
            ),
            (
                "type = \"object\"\nproperties = { a = { type = \"string\", format = \"date\" } }",
                "unknown field `format`",
            ),
        ] {
            let err = schema(text).unwrap_err();
            assert!(err.contains(expected), "{err} does not contain {expected}");
        }
    }
}
