//! Durations as people write them in flags and config files: `500ms`,
//! `3s`, `1m`, `30days`. One spelling for every tcpstall binary.

use std::time::Duration;

/// Parses a duration, with an error that shows how to write one.
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}`: {e} (write durations like 500ms, 3s, 1m)"))
}

/// Formats a duration so that [`parse`] reads it back.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `#[serde(with = "tcpstall_common::duration::text")]` for a `Duration`
/// field written as text.
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// As [`text`], for an optional `Duration` (left out: `None`; pair it
/// with `#[serde(default, skip_serializing_if = "Option::is_none")]`).
pub mod option_text {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::text::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::text::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_explains() {
        for d in [
            Duration::from_millis(500),
            Duration::from_secs(3),
            Duration::from_secs(60),
            Duration::from_secs(30 * 86400),
        ] {
            assert_eq!(parse(&format(d)), Ok(d));
        }
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        let err = parse("soon").expect_err("not a duration");
        assert!(err.contains("soon") && err.contains("500ms"), "{err}");
    }
}
