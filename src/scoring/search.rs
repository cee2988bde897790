//! How the global search finds each patch's nearest reference patch: the
//! one type the settings, the CLI and the engine share.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The global search: brute force over every bank row, or a candidate pass
/// in a projection of the bank, over the inverted lists nearest each
/// patch, with an exact re-rank (see [`crate::scoring::fast`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Every patch against every bank row, in full precision.
    Exact,
    /// Candidates from a principal-component projection of the bank, in
    /// the k-means lists nearest each patch, re-ranked in full precision:
    /// never below the exact distance, and equal to it whenever the nearest
    /// row is among the candidates. The default: on magnetic-tile its image
    /// and pixel AUROC were within 0.0002 of the exact search's, at under a
    /// sixth of its time.
    #[default]
    Fast,
}

impl SearchMode {
    /// Every search, in the order help texts list them.
    pub const ALL: [Self; 2] = [Self::Exact, Self::Fast];

    /// The search's name, as settings files, flags and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Fast => "fast",
        }
    }
}

impl fmt::Display for SearchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a search.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown search {0:?}; use exact or fast")]
pub struct UnknownSearch(pub String);

impl FromStr for SearchMode {
    type Err = UnknownSearch;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| UnknownSearch(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_search_round_trips_through_its_name_and_json() {
        for mode in SearchMode::ALL {
            assert_eq!(mode.to_string().parse::<SearchMode>(), Ok(mode));
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{mode}\""));
            assert_eq!(serde_json::from_str::<SearchMode>(&json).unwrap(), mode);
        }
        assert_eq!("Fast".parse::<SearchMode>(), Ok(SearchMode::Fast));
        assert!(
            "ivf"
                .parse::<SearchMode>()
                .unwrap_err()
                .to_string()
                .contains("exact or fast")
        );
    }
}
