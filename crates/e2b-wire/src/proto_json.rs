//! proto3-JSON field helpers shared by the envd message types.
//!
//! proto3's JSON mapping writes `int64` as a string and `bytes` as standard base64
//! with padding; readers must accept numbers for 64-bit integers, strings for 32-bit
//! ones, and either base64 alphabet with or without padding. Fields equal to their
//! zero value are omitted on output (`skip_serializing_if = "is_default"`).

use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;
use std::fmt;

/// True when `value` equals its type's default, i.e. proto3 omits it on output.
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Decodes base64 in any of the alphabets proto3 JSON readers must accept.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let trimmed = text.trim_end_matches('=');
    if text.contains(['-', '_']) {
        URL_SAFE_NO_PAD
            .decode(trimmed)
            .or_else(|_| URL_SAFE.decode(text))
    } else {
        STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| STANDARD.decode(text))
    }
}

/// Encodes bytes as standard base64 with padding, as proto3 JSON writers do.
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `bytes` fields: standard base64 with padding out, any base64 in.
pub mod base64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode_base64(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text: Option<String> = serde::Deserialize::deserialize(deserializer)?;
        match text {
            None => Ok(Vec::new()),
            Some(text) => decode_base64(&text).map_err(de::Error::custom),
        }
    }
}

/// `int64` fields: a decimal string out, a string or a number in.
pub mod int64 {
    use super::*;

    pub fn serialize<S: Serializer>(value: &i64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        deserializer.deserialize_any(IntVisitor::<i64>::default())
    }
}

/// `uint32` fields: a number out, a number or a decimal string in.
pub mod uint32 {
    use super::*;

    pub fn serialize<S: Serializer>(value: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(*value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        deserializer.deserialize_any(IntVisitor::<u32>::default())
    }
}

/// `int32`/`sint32` fields: a number out, a number or a decimal string in.
pub mod int32 {
    use super::*;

    pub fn serialize<S: Serializer>(value: &i32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i32(*value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
        deserializer.deserialize_any(IntVisitor::<i32>::default())
    }
}

struct IntVisitor<T>(std::marker::PhantomData<T>);

impl<T> Default for IntVisitor<T> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<'de, T> Visitor<'de> for IntVisitor<T>
where
    T: TryFrom<i64> + TryFrom<u64> + std::str::FromStr + Default,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer as a JSON number or a decimal string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
            self.visit_i64(v as i64)
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.trim()
            .parse::<T>()
            .map_err(|_| E::custom(format!("'{v}' is not an integer")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
}

/// Defines a proto enum that serializes by name and accepts its name or number.
#[macro_export]
macro_rules! proto_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = ($num:expr, $text:expr) ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            #[default]
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// The proto enum value name, as written in JSON.
            pub fn as_str(self) -> &'static str {
                match self { $( Self::$variant => $text ),+ }
            }

            /// The proto enum number.
            pub fn number(self) -> i32 {
                match self { $( Self::$variant => $num ),+ }
            }

            /// The variant for a proto enum number, if known.
            pub fn from_number(number: i64) -> Option<Self> {
                $( if number == $num { return Some(Self::$variant); } )+
                None
            }

            /// The variant for a proto enum value name, if known.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $( $text => Some(Self::$variant), )+ _ => None }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
                let found = match &value {
                    serde_json::Value::String(s) => Self::from_name(s),
                    serde_json::Value::Number(n) => n.as_i64().and_then(Self::from_number),
                    serde_json::Value::Null => Some(Self::default()),
                    _ => None,
                };
                // proto3 JSON readers map unknown enum values to the zero value
                // rather than failing, so newer peers stay readable.
                Ok(found.unwrap_or_default())
            }
        }
    };
}
