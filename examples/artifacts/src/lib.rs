//! Paths of the example action components, built from source by this crate's build script.
//!
//! Tests, benchmarks and demos depend on this crate to get real components without
//! checking binaries into the repository. Rust actions are built by the build script; the
//! Python and JavaScript ones by `scripts/build-guests` (which installs their pinned
//! toolchains), so that building this crate never needs Python or Node. [`languages`] finds
//! every language's build of the [`SHARED_ACTIONS`].
#![deny(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// The actions written in every action language, by directory name (the same name under
/// `examples/actions/`, `examples/actions-py/` and `examples/actions-js/`).
pub const SHARED_ACTIONS: [&str; 3] = ["conformance", "validate-order", "charge-payment"];

/// The languages `scripts/build-guests` builds, by the name of their subdirectory of
/// [`GUEST_COMPONENTS_DIR`]. A new language is its build step in that script plus its name here.
pub const SCRIPTED_LANGUAGES: [&str; 2] = ["python", "javascript"];

/// The command that builds the components of the [`SCRIPTED_LANGUAGES`].
pub const BUILD_GUESTS: &str = "./scripts/build-guests";

/// One language's build of the [`SHARED_ACTIONS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanguageBuild {
    /// `rust`, or one of [`SCRIPTED_LANGUAGES`].
    pub language: &'static str,
    /// (action directory name, component path), in [`SHARED_ACTIONS`] order.
    pub components: Vec<(&'static str, PathBuf)>,
}

impl LanguageBuild {
    /// The component of `action` (a [`SHARED_ACTIONS`] name).
    pub fn component(&self, action: &str) -> Option<&Path> {
        self.components
            .iter()
            .find(|(name, _)| *name == action)
            .map(|(_, path)| path.as_path())
    }
}

/// A scripted language whose components are not built yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unbuilt {
    /// The language.
    pub language: &'static str,
    /// The first component found missing.
    pub missing: PathBuf,
}

impl fmt::Display for Unbuilt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} action components are not built ({} is missing); build them with {BUILD_GUESTS}",
            self.language,
            self.missing.display()
        )
    }
}

impl std::error::Error for Unbuilt {}

/// Every action language's build of the [`SHARED_ACTIONS`]: Rust first (always built), then
/// each of the [`SCRIPTED_LANGUAGES`], or why it is not available.
pub fn languages() -> Vec<Result<LanguageBuild, Unbuilt>> {
    let rust = LanguageBuild {
        language: "rust",
        components: SHARED_ACTIONS
            .iter()
            .map(|action| {
                let (_, path) = ALL
                    .iter()
                    .find(|(name, _)| name == action)
                    .expect("every shared action has a Rust crate under examples/actions");
                (*action, PathBuf::from(path))
            })
            .collect(),
    };
    let mut all = vec![Ok(rust)];
    for language in SCRIPTED_LANGUAGES {
        let dir = Path::new(GUEST_COMPONENTS_DIR).join(language);
        let components: Vec<_> = SHARED_ACTIONS
            .iter()
            .map(|action| (*action, dir.join(format!("{action}.wasm"))))
            .collect();
        all.push(match components.iter().find(|(_, path)| !path.is_file()) {
            Some((_, missing)) => Err(Unbuilt {
                language,
                missing: missing.clone(),
            }),
            None => Ok(LanguageBuild {
                language,
                components,
            }),
        });
    }
    all
}
