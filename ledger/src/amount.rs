//! `Dcu`: an amount of compute credit, an exact decimal at a scale of 6 (1 µDCU) (U1).
//!
//! This is the one place where rounding lives (M5): `lease_cost` is the only function that
//! turns GPU-seconds into credit.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Decimal places of every stored amount: 1 µDCU.
pub const SCALE: u32 = 6;

/// Largest magnitude an amount may have: a billion DCU, far beyond any real account, and far
/// below where i128 micro-arithmetic or Decimal could overflow. Parsing refuses more; an
/// account's arrears, metered and spent totals are kept within it by refusing usage records
/// that would pass it (`decide`, D2).
pub const MAX_ABS_DCU: i64 = 1_000_000_000;

const MICROS_PER_DCU: i128 = 1_000_000;
const SECONDS_PER_HOUR: i128 = 3_600;

/// An amount of DCU, exact, at scale 6. Negative amounts exist only as differences.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dcu(Decimal);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmountError {
    #[error("not a decimal amount: {0:?}")]
    NotDecimal(String),
    #[error("more than 6 decimal places: {0:?}")]
    TooPrecise(String),
    #[error("amount out of range: {0:?}")]
    OutOfRange(String),
}

impl Dcu {
    pub const ZERO: Dcu = Dcu(Decimal::ZERO);

    /// From a whole number of micro-DCU.
    pub fn from_micros(micros: i64) -> Dcu {
        Dcu(Decimal::new(micros, SCALE))
    }

    /// A whole number of DCU (within [`MAX_ABS_DCU`], as every amount is).
    pub fn whole(dcu: i64) -> Dcu {
        Dcu::from_micros(dcu.clamp(-MAX_ABS_DCU, MAX_ABS_DCU) * MICROS_PER_DCU as i64)
    }

    /// The amount in micro-DCU (exact: every `Dcu` is at scale 6 or less).
    pub fn micros(self) -> i64 {
        let scaled = self.0 * Decimal::from(MICROS_PER_DCU as i64);
        // Within MAX_ABS_DCU by construction, so always representable.
        scaled.trunc().to_i64().unwrap_or(i64::MAX)
    }

    pub fn decimal(self) -> Decimal {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    pub fn is_positive(self) -> bool {
        self.0 > Decimal::ZERO
    }

    pub fn is_negative(self) -> bool {
        self.0 < Decimal::ZERO
    }

    pub fn min(self, other: Dcu) -> Dcu {
        if self <= other {
            self
        } else {
            other
        }
    }

    pub fn max(self, other: Dcu) -> Dcu {
        if self >= other {
            self
        } else {
            other
        }
    }

    /// Parses a plain decimal string such as `"66.6"` or `"-5"` ([`parse_plain`]); refuses
    /// more than 6 places and huge values.
    pub fn parse(text: &str) -> Result<Dcu, AmountError> {
        let value = parse_plain(text, Sign::MayBeNegative)?;
        Dcu::try_from_decimal(value).map_err(|error| match error {
            AmountError::NotDecimal(_) => AmountError::NotDecimal(text.into()),
            AmountError::TooPrecise(_) => AmountError::TooPrecise(text.into()),
            AmountError::OutOfRange(_) => AmountError::OutOfRange(text.into()),
        })
    }

    pub fn try_from_decimal(value: Decimal) -> Result<Dcu, AmountError> {
        if value.normalize().scale() > SCALE {
            return Err(AmountError::TooPrecise(value.to_string()));
        }
        if value.abs() > Decimal::from(MAX_ABS_DCU) {
            return Err(AmountError::OutOfRange(value.to_string()));
        }
        Ok(Dcu(value.normalize()))
    }
}

/// Whether a leading `-` is allowed where an amount is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    MayBeNegative,
    NotNegative,
}

/// The one parser of amounts that come from input (HTTP bodies, scenario lines, catalog
/// files) and from the log: a plain decimal string, that is an optional `-` (only with
/// [`Sign::MayBeNegative`]), one or more ASCII digits, and optionally a `.` followed by at
/// least one digit. Nothing else: no `+`, no exponent (`1e5`), no `_`, no spaces, no `10.` or
/// `.5`. The value is exact (never rounded); bounds are the caller's (U1: [`Dcu::parse`]).
pub fn parse_plain(text: &str, sign: Sign) -> Result<Decimal, AmountError> {
    let not_decimal = || AmountError::NotDecimal(text.into());
    let unsigned = match (text.strip_prefix('-'), sign) {
        (Some(rest), Sign::MayBeNegative) => rest,
        (Some(_), Sign::NotNegative) => return Err(not_decimal()),
        (None, _) => text,
    };
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|fraction| !digits(fraction)) {
        return Err(not_decimal());
    }
    Decimal::from_str_exact(text).map_err(|_| {
        // Well formed, but more digits than a Decimal holds exactly.
        if whole.trim_start_matches('0').len() > 12 {
            AmountError::OutOfRange(text.into())
        } else {
            AmountError::TooPrecise(text.into())
        }
    })
}

/// Serde helpers that read amounts with [`parse_plain`]: a JSON string only (a JSON number
/// such as `1e5` is refused too).
pub mod plain {
    use std::fmt;

    use rust_decimal::Decimal;
    use serde::Deserializer;

    use super::{parse_plain, Sign};

    struct Text;

    impl serde::de::Visitor<'_> for Text {
        type Value = Decimal;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str(
                "a non-negative plain decimal string: digits, optionally '.' and digits, \
                 e.g. \"99.5\"",
            )
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Decimal, E> {
            parse_plain(text, Sign::NotNegative).map_err(|error| {
                E::custom(format!(
                    "{error}: write a non-negative plain decimal string (digits, optionally \
                     '.' and digits, e.g. \"99.5\"; no sign, exponent or '_')"
                ))
            })
        }
    }

    /// A non-negative amount (a price in CNY).
    pub fn non_negative<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        deserializer.deserialize_str(Text)
    }

    /// An optional non-negative amount: absent or `null` is `None`.
    pub fn non_negative_option<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Decimal>, D::Error> {
        struct Maybe;
        impl<'de> serde::de::Visitor<'de> for Maybe {
            type Value = Option<Decimal>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("null or a non-negative plain decimal string")
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Option<Decimal>, E> {
                Ok(None)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Option<Decimal>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Option<Decimal>, D::Error> {
                non_negative(deserializer).map(Some)
            }
        }
        deserializer.deserialize_option(Maybe)
    }
}

/// M5: the cost of the first `seconds` whole seconds of holding `cards` cards of a model
/// that burns `rate_dcu_per_hour` per card: `round_half_up(rate × cards × n / 3600, 6)`.
///
/// Computed in integer micro-DCU so that the half-up rounding is exact for every input.
/// Saturates instead of overflowing (inputs are bounded far below that by admission).
pub fn lease_cost(rate_dcu_per_hour: Dcu, cards: u32, seconds: u64) -> Dcu {
    let numerator = (rate_dcu_per_hour.micros() as i128)
        .saturating_mul(cards as i128)
        .saturating_mul(seconds as i128);
    // Half up for a non-negative numerator: floor((2x + d) / 2d).
    let micros =
        numerator.saturating_mul(2).saturating_add(SECONDS_PER_HOUR) / (2 * SECONDS_PER_HOUR);
    let bounded = micros.clamp(0, MAX_ABS_DCU as i128 * MICROS_PER_DCU);
    Dcu::from_micros(bounded as i64)
}

/// Rounds a decimal half up at scale 6, for amounts computed elsewhere (e.g. prices per DCU).
pub fn round_dcu(value: Decimal) -> Decimal {
    value.round_dp_with_strategy(SCALE, RoundingStrategy::MidpointAwayFromZero)
}

impl Add for Dcu {
    type Output = Dcu;
    fn add(self, other: Dcu) -> Dcu {
        Dcu(self.0 + other.0)
    }
}

impl AddAssign for Dcu {
    fn add_assign(&mut self, other: Dcu) {
        self.0 += other.0;
    }
}

impl Sub for Dcu {
    type Output = Dcu;
    fn sub(self, other: Dcu) -> Dcu {
        Dcu(self.0 - other.0)
    }
}

impl SubAssign for Dcu {
    fn sub_assign(&mut self, other: Dcu) {
        self.0 -= other.0;
    }
}

impl Neg for Dcu {
    type Output = Dcu;
    fn neg(self) -> Dcu {
        Dcu(-self.0)
    }
}

impl Sum for Dcu {
    fn sum<I: Iterator<Item = Dcu>>(iter: I) -> Dcu {
        iter.fold(Dcu::ZERO, |total, amount| total + amount)
    }
}

impl fmt::Display for Dcu {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0.normalize())
    }
}

impl fmt::Debug for Dcu {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Dcu({})", self.0.normalize())
    }
}

impl Serialize for Dcu {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dcu {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Dcu, D::Error> {
        // A visitor of `&str`: no allocation per value (folding the log parses many).
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Dcu;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a decimal amount as a string, e.g. \"66.6\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Dcu, E> {
                Dcu::parse(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dcu(text: &str) -> Dcu {
        Dcu::parse(text).expect("valid amount")
    }

    #[test]
    fn r_u1_amounts_print_as_short_decimal_strings() {
        assert_eq!(dcu("66.600000").to_string(), "66.6");
        assert_eq!(dcu("0").to_string(), "0");
        assert_eq!(
            serde_json::to_string(&dcu("56.6")).ok(),
            Some("\"56.6\"".into())
        );
    }

    #[test]
    fn r_u1_refuses_more_than_six_places_and_huge_values() {
        assert!(matches!(
            Dcu::parse("0.0000001"),
            Err(AmountError::TooPrecise(_))
        ));
        assert!(matches!(
            Dcu::parse("1e30"),
            Err(AmountError::NotDecimal(_))
        ));
        assert!(matches!(
            Dcu::parse("99999999999"),
            Err(AmountError::OutOfRange(_))
        ));
        assert!(matches!(Dcu::parse("abc"), Err(AmountError::NotDecimal(_))));
    }

    #[test]
    fn r_u1_only_plain_decimal_strings_are_amounts() {
        let good = [
            ("0", "0"),
            ("10", "10"),
            ("007", "7"),
            ("66.6", "66.6"),
            ("66.600000", "66.6"),
            ("0.5", "0.5"),
            ("1000000000", "1000000000"),
            ("0.000001", "0.000001"),
        ];
        for (text, shown) in good {
            assert_eq!(
                Dcu::parse(text).map(|amount| amount.to_string()),
                Ok(shown.to_string()),
                "{text:?}"
            );
            let price = parse_plain(text, Sign::NotNegative).map(|value| value.normalize());
            assert_eq!(price.map(|value| value.to_string()), Ok(shown.to_string()));
        }
        let bad = [
            "", "-", ".", "1e5", "1E-2", "1e30", "+10", "10.", ".5", "1_0", " 10", "10 ", "1.2.3",
            "0x10", "1,5", "--1", "-.5", "NaN", "inf", "１０", "10\n", "1 000",
        ];
        for text in bad {
            assert_eq!(
                Dcu::parse(text),
                Err(AmountError::NotDecimal(text.into())),
                "{text:?}"
            );
            assert!(parse_plain(text, Sign::NotNegative).is_err(), "{text:?}");
        }
        // A leading '-' only where negatives are allowed.
        assert_eq!(
            Dcu::parse("-5").map(|amount| amount.to_string()),
            Ok("-5".into())
        );
        assert_eq!(
            parse_plain("-5", Sign::NotNegative),
            Err(AmountError::NotDecimal("-5".into()))
        );
        // U1 bounds are kept: more than 6 places, huge values, and digits no Decimal holds.
        assert!(matches!(
            Dcu::parse("0.0000001"),
            Err(AmountError::TooPrecise(_))
        ));
        assert!(matches!(
            Dcu::parse("0.00000000000000000000000000000001"),
            Err(AmountError::TooPrecise(_))
        ));
        assert!(matches!(
            Dcu::parse("1000000000.000001"),
            Err(AmountError::OutOfRange(_))
        ));
        assert!(matches!(
            Dcu::parse("-1000000001"),
            Err(AmountError::OutOfRange(_))
        ));
        assert!(matches!(
            Dcu::parse(&"9".repeat(40)),
            Err(AmountError::OutOfRange(_))
        ));
    }

    #[test]
    fn r_u1_prices_are_read_as_plain_strings_only() {
        #[derive(Debug, serde::Deserialize)]
        struct Priced {
            #[serde(default, deserialize_with = "plain::non_negative_option")]
            price: Option<Decimal>,
        }
        let read = |json: &str| serde_json::from_str::<Priced>(json).map(|priced| priced.price);
        assert_eq!(
            read(r#"{"price":"10.5"}"#).ok(),
            Some(Some(Decimal::new(105, 1)))
        );
        assert_eq!(read(r#"{}"#).ok(), Some(None));
        assert_eq!(read(r#"{"price":null}"#).ok(), Some(None));
        for json in [
            r#"{"price":"1e5"}"#,
            r#"{"price":"1_0"}"#,
            r#"{"price":"+10"}"#,
            r#"{"price":"-5"}"#,
            r#"{"price":10}"#,
            r#"{"price":1e5}"#,
        ] {
            let error = read(json).expect_err(json).to_string();
            assert!(error.contains("plain decimal"), "{json}: {error}");
        }
    }

    #[test]
    fn r_m5_cost_rounds_half_up_at_six_places() {
        // 1.28 DCU/h for one second = 0.000355555... → 0.000356
        assert_eq!(lease_cost(dcu("1.28"), 1, 1), dcu("0.000356"));
        // 2.56 × 1 × 1 / 3600 = 0.000711111... → 0.000711
        assert_eq!(lease_cost(dcu("2.56"), 1, 1), dcu("0.000711"));
        // exact midpoint: 0.0018 DCU/h × 1 s = 0.0000005 → 0.000001
        assert_eq!(lease_cost(dcu("0.0018"), 1, 1), dcu("0.000001"));
        assert_eq!(lease_cost(dcu("2.56"), 4, 3600), dcu("10.24"));
        assert_eq!(lease_cost(dcu("2.56"), 4, 0), Dcu::ZERO);
    }

    #[test]
    fn r_m5_splitting_never_changes_the_total() {
        // Each metering charges cost(up to now) − cost(already charged): a telescoping sum.
        let rate = dcu("1.28");
        let mut charged = Dcu::ZERO;
        for second in 1..=7_321u64 {
            charged += lease_cost(rate, 3, second) - charged;
        }
        assert_eq!(charged, lease_cost(rate, 3, 7_321));
    }
}
