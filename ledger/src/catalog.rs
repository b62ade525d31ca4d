//! The catalog (SPEC §2): plans, the extension pack, GPU models and prices.
//!
//! The default is the manual's tables. A catalog is versioned and can be loaded from a JSON
//! file; purchases record the version and the amounts in force (K1), so a later catalog
//! never changes a past balance.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::amount::Dcu;

/// Upper bounds that keep a catalog file sane.
const MAX_PLANS: usize = 64;
const MAX_MODELS: usize = 64;
/// Bounds that keep every product of the catalog's numbers inside its integer types: at
/// most 64 × 64 cards × 1 024 units per lease.
const MAX_UNITS_PER_CARD: u32 = 1_024;
const MAX_PARALLELISM_CAP: u32 = 1_000_000;
const MAX_RATE_DCU_PER_HOUR: i64 = 1_000_000;
const MAX_PER_UNIT: u32 = 1_000_000;

/// The largest price in CNY, of a catalog entry or an order.
pub const MAX_PRICE_CNY: i64 = 1_000_000_000;

/// A price is 0 to `MAX_PRICE_CNY` CNY in fen (at most 2 decimals).
pub fn price_is_valid(price: Decimal) -> bool {
    !price.is_sign_negative()
        && price.normalize().scale() <= 2
        && price <= Decimal::from(MAX_PRICE_CNY)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub id: String,
    pub name: String,
    /// P2/P3: a higher rank upgrades, an equal or lower rank queues.
    pub rank: u32,
    pub grant_dcu: Dcu,
    pub parallelism_cap: u32,
    pub storage_gb: u32,
    #[serde(deserialize_with = "crate::amount::plain::non_negative")]
    pub price_cny: Decimal,
    #[serde(deserialize_with = "crate::amount::plain::non_negative")]
    pub edu_price_cny: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionPack {
    pub id: String,
    pub name: String,
    pub grant_dcu: Dcu,
    #[serde(deserialize_with = "crate::amount::plain::non_negative")]
    pub price_cny: Decimal,
    #[serde(deserialize_with = "crate::amount::plain::non_negative")]
    pub edu_price_cny: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuModel {
    pub id: String,
    pub memory_gb: u32,
    pub rate_dcu_per_hour: Dcu,
    pub units_per_card: u32,
    pub multi_card: bool,
    /// K3: what the platform gives each card (the manual's example: 6 CPUs, 80 GB).
    pub cpus_per_card: u32,
    pub memory_gb_per_card: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub version: String,
    pub plans: Vec<Plan>,
    pub extension: ExtensionPack,
    pub models: Vec<GpuModel>,
    /// K2: while set, every plan's storage allowance is this value.
    pub beta_storage_gb: Option<u32>,
    /// K3: per parallelism unit, at most this many CPUs and this much scratch storage.
    pub cpus_per_unit: u32,
    pub scratch_gb_per_unit: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog is not valid JSON of the expected shape: {0}")]
    Parse(String),
    #[error("catalog is inconsistent: {0}")]
    Invalid(String),
}

impl Catalog {
    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.plans.iter().find(|plan| plan.id == id)
    }

    pub fn model(&self, id: &str) -> Option<&GpuModel> {
        self.models.iter().find(|model| model.id == id)
    }

    /// K2: the storage allowance a plan gives.
    pub fn storage_allowance_gb(&self, plan: &Plan) -> u32 {
        self.beta_storage_gb.unwrap_or(plan.storage_gb)
    }

    pub fn from_json(text: &str) -> Result<Catalog, CatalogError> {
        let catalog: Catalog =
            serde_json::from_str(text).map_err(|error| CatalogError::Parse(error.to_string()))?;
        catalog.validate()?;
        Ok(catalog)
    }

    pub fn validate(&self) -> Result<(), CatalogError> {
        let invalid = |message: String| Err(CatalogError::Invalid(message));
        if self.plans.is_empty() || self.plans.len() > MAX_PLANS {
            return invalid(format!("between 1 and {MAX_PLANS} plans"));
        }
        if self.models.is_empty() || self.models.len() > MAX_MODELS {
            return invalid(format!("between 1 and {MAX_MODELS} GPU models"));
        }
        for (index, plan) in self.plans.iter().enumerate() {
            if plan.id.is_empty() || plan.id == self.extension.id {
                return invalid(format!("plan id {:?} is empty or the extension's", plan.id));
            }
            if self.plans[..index].iter().any(|other| other.id == plan.id) {
                return invalid(format!("plan id {:?} twice", plan.id));
            }
            if !plan.grant_dcu.is_positive() {
                return invalid(format!("plan {:?} needs a positive grant", plan.id));
            }
            if plan.parallelism_cap > MAX_PARALLELISM_CAP || plan.storage_gb > MAX_PER_UNIT {
                return invalid(format!(
                    "plan {:?}: parallelism_cap and storage_gb are at most {MAX_PARALLELISM_CAP}",
                    plan.id
                ));
            }
            if !price_is_valid(plan.price_cny) || !price_is_valid(plan.edu_price_cny) {
                return invalid(format!(
                    "plan {:?}: prices are 0 to {MAX_PRICE_CNY} CNY with at most 2 decimals",
                    plan.id
                ));
            }
        }
        if !self.extension.grant_dcu.is_positive() {
            return invalid("the extension pack needs a positive grant".into());
        }
        if !price_is_valid(self.extension.price_cny)
            || !price_is_valid(self.extension.edu_price_cny)
        {
            return invalid(format!(
                "the extension pack's prices are 0 to {MAX_PRICE_CNY} CNY with at most 2 decimals"
            ));
        }
        if self.cpus_per_unit > MAX_PER_UNIT
            || self.scratch_gb_per_unit > MAX_PER_UNIT
            || self.beta_storage_gb.is_some_and(|gb| gb > MAX_PER_UNIT)
        {
            return invalid(format!(
                "cpus_per_unit, scratch_gb_per_unit and beta_storage_gb are at most {MAX_PER_UNIT}"
            ));
        }
        for (index, model) in self.models.iter().enumerate() {
            if self.models[..index]
                .iter()
                .any(|other| other.id == model.id)
            {
                return invalid(format!("model id {:?} twice", model.id));
            }
            if !model.rate_dcu_per_hour.is_positive()
                || model.rate_dcu_per_hour > Dcu::whole(MAX_RATE_DCU_PER_HOUR)
                || model.units_per_card == 0
                || model.units_per_card > MAX_UNITS_PER_CARD
            {
                return invalid(format!(
                    "model {:?} needs a rate of more than 0 and at most {MAX_RATE_DCU_PER_HOUR} \
                     DCU/h, and 1 to {MAX_UNITS_PER_CARD} units per card",
                    model.id
                ));
            }
            if model.cpus_per_card > MAX_PER_UNIT || model.memory_gb_per_card > MAX_PER_UNIT {
                return invalid(format!(
                    "model {:?}: cpus_per_card and memory_gb_per_card are at most {MAX_PER_UNIT}",
                    model.id
                ));
            }
        }
        Ok(())
    }
}

fn dcu(text: &str) -> Dcu {
    Dcu::parse(text).unwrap_or(Dcu::ZERO)
}

fn cny(text: &str) -> Decimal {
    text.parse().unwrap_or(Decimal::ZERO)
}

impl Default for Catalog {
    /// The manual's tables (SPEC §2), during the public beta (K2: 100 GB).
    fn default() -> Catalog {
        let plan = |id: &str, name: &str, rank, grant, cap, storage, price, edu| Plan {
            id: id.into(),
            name: name.into(),
            rank,
            grant_dcu: dcu(grant),
            parallelism_cap: cap,
            storage_gb: storage,
            price_cny: cny(price),
            edu_price_cny: cny(edu),
        };
        Catalog {
            version: "2025-04-16".into(),
            plans: vec![
                plan("trial", "尝鲜版", 1, "20", 2, 30, "135", "119"),
                plan("basic", "初级版", 2, "56.6", 4, 60, "365", "325"),
                plan("advanced", "高级版", 3, "500", 8, 100, "3100", "2750"),
            ],
            extension: ExtensionPack {
                id: "extension".into(),
                name: "扩展包".into(),
                grant_dcu: dcu("10"),
                price_cny: cny("67.5"),
                edu_price_cny: cny("59.5"),
            },
            models: vec![
                GpuModel {
                    id: "dc100-40g".into(),
                    memory_gb: 40,
                    rate_dcu_per_hour: dcu("1.28"),
                    units_per_card: 1,
                    multi_card: false,
                    cpus_per_card: 6,
                    memory_gb_per_card: 40,
                },
                GpuModel {
                    id: "dc100-80g".into(),
                    memory_gb: 80,
                    rate_dcu_per_hour: dcu("2.56"),
                    units_per_card: 2,
                    multi_card: true,
                    cpus_per_card: 6,
                    memory_gb_per_card: 80,
                },
            ],
            beta_storage_gb: Some(100),
            cpus_per_unit: 10,
            scratch_gb_per_unit: 121,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_k1_default_catalog_is_the_manuals_table_and_valid() {
        let catalog = Catalog::default();
        assert!(catalog.validate().is_ok());
        let basic = catalog.plan("basic").expect("basic exists");
        assert_eq!(basic.grant_dcu.to_string(), "56.6");
        assert_eq!(basic.edu_price_cny.to_string(), "325");
        assert_eq!(catalog.extension.price_cny.to_string(), "67.5");
        let model = catalog.model("dc100-80g").expect("80g exists");
        assert_eq!(model.rate_dcu_per_hour.to_string(), "2.56");
    }

    #[test]
    fn r_k2_beta_storage_overrides_every_plan() {
        let mut catalog = Catalog::default();
        let trial = catalog.plan("trial").cloned().expect("trial exists");
        assert_eq!(catalog.storage_allowance_gb(&trial), 100);
        catalog.beta_storage_gb = None;
        assert_eq!(catalog.storage_allowance_gb(&trial), 30);
    }

    #[test]
    fn r_k1_catalog_round_trips_through_json_and_refuses_garbage() {
        let text = serde_json::to_string(&Catalog::default()).expect("serialises");
        assert_eq!(Catalog::from_json(&text).ok(), Some(Catalog::default()));
        assert!(Catalog::from_json("{}").is_err());
        assert!(Catalog::from_json("not json").is_err());
        let duplicated = text.replace("\"basic\"", "\"trial\"");
        assert!(Catalog::from_json(&duplicated).is_err());
    }

    #[test]
    fn r_u1_a_catalog_with_amounts_not_plain_decimal_strings_is_refused() {
        let text = serde_json::to_string(&Catalog::default()).expect("serialises");
        let edits = [
            ("\"price_cny\":\"135\"", "\"price_cny\":\"1.35e2\""),
            ("\"price_cny\":\"135\"", "\"price_cny\":\"1_35\""),
            ("\"price_cny\":\"135\"", "\"price_cny\":135"),
            ("\"edu_price_cny\":\"119\"", "\"edu_price_cny\":\"+119\""),
            ("\"grant_dcu\":\"20\"", "\"grant_dcu\":\"2e1\""),
            (
                "\"rate_dcu_per_hour\":\"1.28\"",
                "\"rate_dcu_per_hour\":\".128e1\"",
            ),
            (
                "\"rate_dcu_per_hour\":\"1.28\"",
                "\"rate_dcu_per_hour\":\" 1.28\"",
            ),
        ];
        for (from, to) in edits {
            assert!(text.contains(from), "{from} not in the default catalog");
            let edited = text.replacen(from, to, 1);
            assert!(Catalog::from_json(&edited).is_err(), "{to} was accepted");
        }
    }

    #[test]
    fn r_k1_a_catalog_with_out_of_range_numbers_is_refused() {
        let edits: [fn(&mut Catalog); 8] = [
            |c| c.models[0].units_per_card = u32::MAX,
            |c| c.models[0].units_per_card = 1 << 29,
            |c| c.models[0].rate_dcu_per_hour = Dcu::from_micros(i64::MAX / 2),
            |c| c.plans[0].edu_price_cny = Decimal::new(-1, 0),
            |c| c.plans[0].price_cny = Decimal::new(1_001, 3),
            |c| c.extension.edu_price_cny = Decimal::new(-5, 1),
            |c| c.plans[0].parallelism_cap = u32::MAX,
            |c| c.cpus_per_unit = u32::MAX,
        ];
        for (index, edit) in edits.iter().enumerate() {
            let mut catalog = Catalog::default();
            edit(&mut catalog);
            assert!(catalog.validate().is_err(), "edit {index} was accepted");
            let text = serde_json::to_string(&catalog).expect("serialises");
            assert!(Catalog::from_json(&text).is_err(), "edit {index} loads");
        }
    }
}
