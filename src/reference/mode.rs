//! How a frame's patches are matched against the golden reference: the one
//! type the settings, the reference file, the CLI and the reports share.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How frame patches are compared with the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    /// PatchCore: each patch against the nearest reference patch anywhere.
    #[default]
    Global,
    /// Fixtured parts: each patch against reference patches within a few
    /// cells of the same place.
    Aligned,
}

impl MatchMode {
    /// Every mode, in the order help texts list them.
    pub const ALL: [Self; 2] = [Self::Global, Self::Aligned];

    /// The mode's name, as settings files, flags and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Aligned => "aligned",
        }
    }

    /// The byte the reference file stores.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Global => 0,
            Self::Aligned => 1,
        }
    }

    /// The mode a reference file's byte names.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.code() == code)
    }
}

impl fmt::Display for MatchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a matching mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown matching mode {0:?}; use global or aligned")]
pub struct UnknownMode(pub String);

impl FromStr for MatchMode {
    type Err = UnknownMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| UnknownMode(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_round_trips_through_its_name_code_and_json() {
        for mode in MatchMode::ALL {
            assert_eq!(mode.to_string().parse::<MatchMode>(), Ok(mode));
            assert_eq!(MatchMode::from_code(mode.code()), Some(mode));
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{mode}\""));
            assert_eq!(serde_json::from_str::<MatchMode>(&json).unwrap(), mode);
        }
        assert_eq!("Aligned".parse::<MatchMode>(), Ok(MatchMode::Aligned));
        assert!(
            "nearest"
                .parse::<MatchMode>()
                .unwrap_err()
                .to_string()
                .contains("global or aligned")
        );
        assert_eq!(MatchMode::from_code(9), None);
    }
}
