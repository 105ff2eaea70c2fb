//! The field names of a `#[derive(Deserialize)]` struct, read from serde itself so the
//! "valid keys" lists in error messages can never drift from the schema.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;

#[derive(Debug)]
struct Probe(&'static [&'static str]);

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for Probe {}

impl de::Error for Probe {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Probe(&[])
    }
}

struct FieldsOf;

impl<'de> Deserializer<'de> for FieldsOf {
    type Error = Probe;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Probe> {
        Err(Probe(fields))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Probe> {
        Err(Probe(&[]))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

/// Field names of `T` in declaration order (empty for non-structs).
pub fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    match T::deserialize(FieldsOf) {
        Err(Probe(fields)) => fields,
        Ok(_) => &[],
    }
}

/// Field names of `T`, sorted, plus `extra` (e.g. `kind` of a stage table).
pub fn sorted_fields_of<'de, T: Deserialize<'de>>(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = fields_of::<T>().iter().chain(extra).copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::schema::{ModelSpec, TrainParams};

    #[test]
    fn reads_schema_fields() {
        assert_eq!(
            fields_of::<ModelSpec>(),
            &["preset", "path", "model", "torch_dtype", "device"]
        );
        let train = sorted_fields_of::<TrainParams>(&["kind"]);
        assert!(train.contains(&"lora_rank") && train.contains(&"kind"));
        assert!(train.windows(2).all(|w| w[0] < w[1]));
    }
}
