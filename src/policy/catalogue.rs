//! The catalogue of registered public data resources and approved scenarios
//! (`policies/catalogue.toml`). Casbin decides who may do what; the catalogue
//! says what each dataset *is* (grade, personal information, holder,
//! registration period, price) and what each scenario allows as purpose.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::Rule;
use crate::contract::PurposeClass;
use crate::metering::PriceItem;

/// GB/T 43697-2024 data grades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    Core,
    Important,
    General,
}

impl Grade {
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::Core => "core",
            Grade::Important => "important",
            Grade::General => "general",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonalInfo {
    #[default]
    None,
    Personal,
    Sensitive,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub code: String,
    pub name: String,
    /// Purpose classes that fit this scenario (purpose limitation).
    pub purposes: Vec<PurposeClass>,
    /// The scenario's authorization ends on this day (UTC); at most 5 years.
    pub authorized_until: NaiveDate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// Unified registration code, `GX-<6-digit region>-<DOMAIN>-<4-digit serial>`.
    pub code: String,
    pub name: String,
    /// The government department that holds and registered the data, by
    /// its unified social credit code (a government body's begins with
    /// `11`): the `aud` of the dataset's grants and the organisation its
    /// reviewers' and data hosts' tokens must name.
    pub holder: String,
    /// The department's name, for people.
    pub holder_name: String,
    pub grade: Grade,
    #[serde(default)]
    pub personal_info: PersonalInfo,
    /// Registration is valid for 3 years; access ends with it.
    pub registered_until: NaiveDate,
    /// Qualification claims a requester's token must carry.
    #[serde(default)]
    pub requires_qualifications: Vec<String>,
    /// Fields to be masked in any output (an obligation `mask:<field>`).
    #[serde(default)]
    pub masked_fields: Vec<String>,
    pub price: PriceItem,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    #[serde(default)]
    operator: Option<Operator>,
    #[serde(default)]
    scenarios: Vec<Scenario>,
    #[serde(default)]
    datasets: Vec<Dataset>,
}

/// The authorized operator whose products these prices are for, and the
/// revenue it may earn from them in a calendar year (its permitted
/// revenue: beyond it charges go on, the excess is deducted in the next
/// period).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    pub name: String,
    /// Its unified social credit code.
    pub uscc: String,
    pub yearly_revenue_cap_fen: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub operator: Option<Operator>,
    pub scenarios: BTreeMap<String, Scenario>,
    pub datasets: BTreeMap<String, Dataset>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    #[error("catalogue.toml: {0}")]
    Parse(String),
    #[error("catalogue.toml: {kind} {code} is listed twice")]
    Duplicate { kind: &'static str, code: String },
    #[error("catalogue.toml: dataset code {0} is not of the form GX-<6 digits>-<DOMAIN>-<4 digits>")]
    BadCode(String),
    #[error(
        "catalogue.toml: dataset {dataset}: holder {holder:?} is not a unified social credit code (name the department in holder_name)"
    )]
    BadHolder { dataset: String, holder: String },
    #[error("catalogue.toml: scenario {0} allows no purpose class")]
    NoPurpose(String),
    #[error("catalogue.toml: {0}")]
    Price(#[from] crate::metering::PriceError),
}

/// `GX-610100-TOUR-0001`: region is a 6-digit administrative division code,
/// the domain 2–8 upper-case letters, the serial 4 digits.
pub fn is_unified_code(code: &str) -> bool {
    let parts: Vec<&str> = code.split('-').collect();
    matches!(parts.as_slice(), ["GX", region, domain, serial]
        if region.len() == 6 && region.bytes().all(|b| b.is_ascii_digit())
        && (2..=8).contains(&domain.len()) && domain.bytes().all(|b| b.is_ascii_uppercase())
        && serial.len() == 4 && serial.bytes().all(|b| b.is_ascii_digit()))
}

impl Catalogue {
    pub fn parse(text: &str) -> Result<Self, CatalogueError> {
        let file: CatalogueFile = toml::from_str(text).map_err(|e| CatalogueError::Parse(e.to_string()))?;
        let mut cat = Catalogue { operator: file.operator, ..Catalogue::default() };
        if let Some(o) = &cat.operator
            && (!crate::domain::is_uscc(&o.uscc) || o.yearly_revenue_cap_fen <= 0)
        {
            return Err(CatalogueError::Parse(format!(
                "operator {}: needs a unified social credit code and a positive yearly_revenue_cap_fen",
                o.name
            )));
        }
        for s in file.scenarios {
            if s.purposes.is_empty() {
                return Err(CatalogueError::NoPurpose(s.code));
            }
            if cat.scenarios.contains_key(&s.code) {
                return Err(CatalogueError::Duplicate { kind: "scenario", code: s.code });
            }
            cat.scenarios.insert(s.code.clone(), s);
        }
        for d in file.datasets {
            if !is_unified_code(&d.code) {
                return Err(CatalogueError::BadCode(d.code));
            }
            if !crate::domain::is_uscc(&d.holder) {
                return Err(CatalogueError::BadHolder { dataset: d.code, holder: d.holder });
            }
            d.price.validate()?;
            if cat.datasets.contains_key(&d.code) {
                return Err(CatalogueError::Duplicate { kind: "dataset", code: d.code });
            }
            cat.datasets.insert(d.code.clone(), d);
        }
        Ok(cat)
    }

    /// Grouping lines (`g2, dataset, group`) derived from the catalogue, so
    /// rules can name `grade:important` or `pi:sensitive` without repeating
    /// what the catalogue already says about each dataset.
    pub fn derived_groupings(&self) -> Vec<String> {
        self.derived_groups().iter().map(ToString::to_string).collect()
    }

    /// The same groupings as typed rules.
    pub fn derived_groups(&self) -> Vec<Rule> {
        let group = |d: &Dataset, group: String| Rule::Group { member: d.code.clone(), group };
        let mut lines = Vec::new();
        for d in self.datasets.values() {
            lines.push(group(d, format!("grade:{}", d.grade.as_str())));
            match d.personal_info {
                PersonalInfo::None => {}
                PersonalInfo::Personal => lines.push(group(d, "pi:personal".into())),
                PersonalInfo::Sensitive => {
                    lines.push(group(d, "pi:personal".into()));
                    lines.push(group(d, "pi:sensitive".into()));
                }
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_codes_follow_the_documented_format() {
        assert!(is_unified_code("GX-610100-TOUR-0001"));
        assert!(!is_unified_code("GX-6101-TOUR-0001"));
        assert!(!is_unified_code("GX-610100-tour-0001"));
        assert!(!is_unified_code("XX-610100-TOUR-0001"));
        assert!(!is_unified_code("GX-610100-TOUR-0001-9"));
    }
}
