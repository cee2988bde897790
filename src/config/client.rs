//! Flags of the client commands, `loupe recipe` and `loupe inspect`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::SettingsArgs;

/// Where a client command finds the server.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The Loupe server's address.
    #[arg(long, env = "LOUPE_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
}

/// `loupe recipe ...`.
#[derive(Debug, Args)]
pub struct RecipeArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// What to do with recipes.
    #[command(subcommand)]
    pub action: RecipeAction,
}

/// Recipe actions.
#[derive(Debug, Subcommand)]
pub enum RecipeAction {
    /// Creates a recipe.
    Create {
        /// Recipe name: letters, digits, '-', '_', '.'.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Changes a recipe's settings (unset flags keep their current value).
    Update {
        /// Recipe name.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Lists the recipes.
    List,
    /// Shows one recipe.
    Show {
        /// Recipe name.
        name: String,
        /// Print the settings as JSON (usable with --settings).
        #[arg(long, env = "LOUPE_JSON")]
        json: bool,
    },
    /// Deletes a recipe and its reference.
    Delete {
        /// Recipe name.
        name: String,
    },
    /// Sends good frames (image files) to a recipe's golden reference.
    AddRefs {
        /// Recipe name.
        name: String,
        /// Image files of good parts.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Start the reference afresh instead of adding to it.
        #[arg(long, env = "LOUPE_REPLACE")]
        replace: bool,
    },
}

/// `loupe inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Recipe to inspect against.
    #[arg(long, env = "LOUPE_RECIPE")]
    pub recipe: String,

    /// Image files to inspect.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// Write a heatmap overlay PNG per file into this folder.
    #[arg(long, env = "LOUPE_HEATMAP_DIR", value_name = "DIR")]
    pub heatmap: Option<PathBuf>,
}
