//! A duration as people write it in a flag, the environment or the file.

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// A duration written as `10ms`, `1s`, `2m`, `1h 30m`; a bare `0` is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl FromStr for DurationValue {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim() == "0" {
            return Ok(Self(Duration::ZERO));
        }
        humantime::parse_duration(text.trim())
            .map(Self)
            .map_err(|e| format!("{e} (write a duration like 10ms, 1s, 2m)"))
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
