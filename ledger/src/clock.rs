//! Instants (U2, U3, U4): whole seconds since the Unix epoch, UTC.
//!
//! The domain never reads a clock: every command carries `now`, every query `as_of`.
//! The ledger's clock ticks in whole seconds (metering is per started second, M5); an
//! instant given with a fraction of a second is truncated to its second.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Seconds in a day.
pub const DAY_S: i64 = 86_400;
/// U2: the platform's business day is Asia/Shanghai's, UTC+08:00 (no daylight saving).
pub const BUSINESS_OFFSET_S: i64 = 8 * 3_600;
/// U3: a period lasts exactly 30 days.
pub const PERIOD_S: i64 = 30 * DAY_S;
/// C1: a carry-over window lasts 30 days.
pub const CARRY_OVER_WINDOW_S: i64 = 30 * DAY_S;
/// S2: storage is reclaimed 15 days after a lapse (or the last login after it).
pub const RETENTION_S: i64 = 15 * DAY_S;

/// Earliest and latest instants accepted: years 1970 to 9999, so that adding periods never
/// overflows and every instant formats as RFC 3339.
pub const MIN_S: i64 = 0;
pub const MAX_S: i64 = 253_402_300_799 - 10 * 365 * DAY_S;

/// An instant, whole seconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimeError {
    #[error("not an RFC 3339 instant: {0:?}")]
    NotRfc3339(String),
    #[error("instant out of range (1970..9989): {0:?}")]
    OutOfRange(String),
}

impl Timestamp {
    pub fn seconds(self) -> i64 {
        self.0
    }

    pub fn plus_seconds(self, seconds: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(seconds))
    }

    /// Whole seconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn seconds_since(self, earlier: Timestamp) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0)
    }

    pub fn parse(text: &str) -> Result<Timestamp, TimeError> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|_| TimeError::NotRfc3339(text.into()))?;
        let seconds = parsed.unix_timestamp();
        if !(MIN_S..=MAX_S).contains(&seconds) {
            return Err(TimeError::OutOfRange(text.into()));
        }
        Ok(Timestamp(seconds))
    }

    /// RFC 3339 in UTC, e.g. `2025-04-01T00:00:00Z`.
    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|instant| instant.format(&Rfc3339).ok())
            .unwrap_or_else(|| format!("@{}", self.0))
    }

    /// U2: the business day (Asia/Shanghai, +08:00) this instant falls on, as `YYYY-MM-DD`.
    pub fn business_day(self) -> String {
        self.in_business_time()
            .map(|instant| instant.date().to_string())
            .unwrap_or_default()
    }

    /// U2: the first instant of the next business day.
    pub fn next_business_midnight(self) -> Timestamp {
        let local = self.0 + BUSINESS_OFFSET_S;
        Timestamp((local.div_euclid(DAY_S) + 1) * DAY_S - BUSINESS_OFFSET_S)
    }

    /// U2: this instant on the business clock (+08:00).
    pub fn in_business_time(self) -> Option<OffsetDateTime> {
        let offset = UtcOffset::from_whole_seconds(BUSINESS_OFFSET_S as i32).ok()?;
        Some(
            OffsetDateTime::from_unix_timestamp(self.0)
                .ok()?
                .to_offset(offset),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        // A visitor of `&str`: no allocation per value (folding the log parses many).
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Timestamp;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an RFC 3339 instant as a string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Timestamp, E> {
                Timestamp::parse(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_u2_parses_offsets_and_prints_utc() {
        let instant = Timestamp::parse("2025-04-01T00:00:00+08:00").expect("valid");
        assert_eq!(instant.to_rfc3339(), "2025-03-31T16:00:00Z");
        assert_eq!(instant.business_day(), "2025-04-01");
    }

    #[test]
    fn r_u2_business_days_turn_at_midnight_in_shanghai() {
        let evening = Timestamp::parse("2025-04-01T15:59:59Z").expect("valid");
        assert_eq!(evening.business_day(), "2025-04-01");
        let midnight = evening.next_business_midnight();
        assert_eq!(midnight.to_rfc3339(), "2025-04-01T16:00:00Z");
        assert_eq!(midnight.business_day(), "2025-04-02");
        assert_eq!(
            midnight.next_business_midnight().to_rfc3339(),
            "2025-04-02T16:00:00Z"
        );
    }

    #[test]
    fn r_u4_fractions_truncate_to_the_second() {
        let instant = Timestamp::parse("2025-04-01T00:00:00.999Z").expect("valid");
        assert_eq!(
            instant,
            Timestamp::parse("2025-04-01T00:00:00Z").expect("valid")
        );
    }

    #[test]
    fn r_u2_refuses_garbage_and_far_instants() {
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::parse("1969-12-31T23:59:59Z").is_err());
        assert!(Timestamp::parse("9999-12-31T23:59:59Z").is_err());
    }
}
