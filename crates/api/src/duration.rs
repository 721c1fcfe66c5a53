//! Retention durations such as `7d`, `30min` or `1y6mo`, as `retentionConfig.lastAccessTimeout`
//! takes them.
//!
//! Units: `y` (365 days), `mo` (30 days), `d`, `h`, `min`. Terms may be combined (`1d12h`);
//! each is a whole number followed by a unit. The total must be positive.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression the CRD schema uses for a retention duration.
pub const DURATION_PATTERN: &str = "^([0-9]+(y|mo|d|h|min))+$";

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// A validated retention duration that remembers how it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionDuration {
    text: String,
    seconds: u64,
}

/// Why a duration string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("the duration is empty; write a number and a unit, e.g. `7d` or `30min`")]
    Empty,
    /// A term had no number before its unit.
    #[error("`{0}`: every unit needs a whole number before it, e.g. `7d` or `1d12h`")]
    MissingNumber(String),
    /// A term had a number but no unit.
    #[error("`{0}`: the number has no unit; add one of y, mo, d, h, min (e.g. `{0}d`)")]
    MissingUnit(String),
    /// A unit that is not one of y, mo, d, h, min.
    #[error("`{0}` is not a unit; use y, mo, d, h or min (e.g. `7d`, `30min`)")]
    UnknownUnit(String),
    /// A minus sign.
    #[error("durations cannot be negative; write a positive one such as `7d`")]
    Negative,
    /// The total does not fit in 64 bits of seconds.
    #[error("the duration is too long")]
    Overflow,
    /// The total is zero.
    #[error("the duration is zero; a snapshot would be deleted at once, use at least `1min`")]
    Zero,
}

impl RetentionDuration {
    /// Parses a duration such as `7d`, `30min` or `1y6mo`.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(DurationError::Empty);
        }
        let mut seconds: u64 = 0;
        let mut rest = trimmed;
        while !rest.is_empty() {
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            let letters = rest[digits..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .count();
            let (number, after) = rest.split_at(digits);
            let (unit, after) = after.split_at(letters);
            if digits == 0 {
                if rest.starts_with('-') {
                    return Err(DurationError::Negative);
                }
                if unit.is_empty() {
                    let bad = rest.chars().next().map(String::from).unwrap_or_default();
                    return Err(DurationError::UnknownUnit(bad));
                }
                return Err(DurationError::MissingNumber(unit.to_owned()));
            }
            if unit.is_empty() {
                return Err(DurationError::MissingUnit(number.to_owned()));
            }
            let per_unit = match unit {
                "y" => 365 * DAY,
                "mo" => 30 * DAY,
                "d" => DAY,
                "h" => HOUR,
                "min" => MINUTE,
                other => return Err(DurationError::UnknownUnit(other.to_owned())),
            };
            let count: u64 = number.parse().map_err(|_| DurationError::Overflow)?;
            let term = count.checked_mul(per_unit).ok_or(DurationError::Overflow)?;
            seconds = seconds.checked_add(term).ok_or(DurationError::Overflow)?;
            rest = after;
        }
        if seconds == 0 {
            return Err(DurationError::Zero);
        }
        Ok(Self {
            text: trimmed.to_owned(),
            seconds,
        })
    }

    /// The duration as a standard [`Duration`].
    pub fn as_duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    /// The duration in whole seconds.
    pub fn as_secs(&self) -> u64 {
        self.seconds
    }

    /// The text the duration was written as.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for RetentionDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for RetentionDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for RetentionDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for RetentionDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(|e| serde::de::Error::custom(format!("bad duration: {e}")))
    }
}

impl JsonSchema for RetentionDuration {
    fn schema_name() -> Cow<'static, str> {
        "RetentionDuration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration: whole numbers with units y (365d), mo (30d), d, h, min, e.g. `7d`, `30min`, `1d12h`."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(RetentionDuration::parse("30min").unwrap().as_secs(), 1800);
        assert_eq!(RetentionDuration::parse("2h").unwrap().as_secs(), 7200);
        assert_eq!(RetentionDuration::parse("7d").unwrap().as_secs(), 7 * 86400);
        assert_eq!(
            RetentionDuration::parse("1mo").unwrap().as_secs(),
            30 * 86400
        );
        assert_eq!(
            RetentionDuration::parse("1y").unwrap().as_secs(),
            365 * 86400
        );
    }

    #[test]
    fn combines_terms() {
        let d = RetentionDuration::parse("1d12h30min").unwrap();
        assert_eq!(d.as_secs(), 86400 + 12 * 3600 + 30 * 60);
        assert_eq!(d.to_string(), "1d12h30min");
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        assert_eq!(RetentionDuration::parse(""), Err(DurationError::Empty));
        assert_eq!(
            RetentionDuration::parse("7"),
            Err(DurationError::MissingUnit("7".into()))
        );
        assert_eq!(
            RetentionDuration::parse("7days"),
            Err(DurationError::UnknownUnit("days".into()))
        );
        assert_eq!(
            RetentionDuration::parse("7m"),
            Err(DurationError::UnknownUnit("m".into()))
        );
        assert_eq!(
            RetentionDuration::parse("d"),
            Err(DurationError::MissingNumber("d".into()))
        );
        assert_eq!(
            RetentionDuration::parse("-1d"),
            Err(DurationError::Negative)
        );
        assert_eq!(RetentionDuration::parse("0d"), Err(DurationError::Zero));
        assert_eq!(
            RetentionDuration::parse("7d é"),
            Err(DurationError::UnknownUnit(" ".into()))
        );
        assert_eq!(
            RetentionDuration::parse("99999999999999999999y"),
            Err(DurationError::Overflow)
        );
    }

    #[test]
    fn serde_round_trip_keeps_text() {
        let d: RetentionDuration = serde_json::from_str("\"1y6mo\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1y6mo\"");
        let err = serde_json::from_str::<RetentionDuration>("\"soon\"").unwrap_err();
        assert!(err.to_string().contains("bad duration"), "{err}");
    }

    proptest! {
        #[test]
        fn any_sum_of_terms_parses_to_its_total(terms in proptest::collection::vec((1u64..1000, 0usize..5), 1..5)) {
            let units = [("y", 365 * DAY), ("mo", 30 * DAY), ("d", DAY), ("h", HOUR), ("min", MINUTE)];
            let text: String = terms.iter().map(|(n, u)| format!("{n}{}", units[*u].0)).collect();
            let total: u64 = terms.iter().map(|(n, u)| n * units[*u].1).sum();
            prop_assert_eq!(RetentionDuration::parse(&text).unwrap().as_secs(), total);
        }
    }
}
