//! Finds the ONNX Runtime shared library and loads it without letting `ort`
//! panic: every candidate is opened and its version checked here first, so a
//! missing, unreadable or too-old library becomes one line of error text.

use std::ffi::{CStr, c_char};
use std::fmt;
use std::path::{Path, PathBuf};

/// The library file that `make setup` unpacks from the pinned PyPI wheel.
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";

/// The folder, relative to the checkout, that `make setup` unpacks into.
pub const SETUP_DIR: &str = ".loupe/onnxruntime";

/// What a user runs to get a working library.
pub const FIX_HINT: &str = "run `make setup` in the Loupe checkout, or pass --onnxruntime PATH";

/// The oldest runtime this build can drive: `ort` asks for API version
/// `ort::MINOR_VERSION`, which ONNX Runtime 1.x introduced.
pub const MIN_MINOR_VERSION: u32 = ort::MINOR_VERSION;

/// Where a candidate path came from, in lookup order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--onnxruntime PATH` (or `LOUPE_ONNXRUNTIME`).
    Flag,
    /// The `ORT_DYLIB_PATH` environment variable, as `ort` itself uses it.
    EnvVar,
    /// Next to the running executable, symbolic links resolved (an
    /// installed binary with its library): before the setup folder, so that
    /// a binary installed from a checkout uses the library installed with
    /// it, not the checkout's.
    ExeDir,
    /// The folder `make setup` fills.
    SetupDir,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flag => "--onnxruntime",
            Self::EnvVar => "ORT_DYLIB_PATH",
            Self::SetupDir => "setup folder",
            Self::ExeDir => "next to the executable",
        })
    }
}

/// One place the library may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The file to open.
    pub path: PathBuf,
    /// Why it is looked at.
    pub source: Source,
}

/// The inputs of the lookup, gathered once so the order can be tested
/// without touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// `--onnxruntime PATH`.
    pub flag: Option<PathBuf>,
    /// `ORT_DYLIB_PATH`, when set and not empty.
    pub env_var: Option<PathBuf>,
    /// The setup folder (holding [`LIBRARY_FILE`]).
    pub setup_dir: Option<PathBuf>,
    /// The folder of the running executable.
    pub exe_dir: Option<PathBuf>,
}

/// Why no runtime could be loaded. Displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No candidate exists.
    #[error("ONNX Runtime library not found (tried {tried}); {FIX_HINT}")]
    NotFound {
        /// Every path looked at, with its source.
        tried: String,
    },
    /// A candidate exists but cannot be loaded or is too old.
    #[error("ONNX Runtime library {path} ({source_kind}) is unusable: {reason}; {FIX_HINT}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// Where it came from.
        source_kind: Source,
        /// What is wrong with it.
        reason: String,
    },
}

impl Lookup {
    /// Gathers the lookup inputs from the process: the flag as given,
    /// `ORT_DYLIB_PATH`, the executable's folder (`current_exe` resolves
    /// `/proc/self/exe`, so a symbolic link to the binary leads to the
    /// folder of the binary itself), and the setup folder of the checkout
    /// this binary was built from.
    pub fn from_process(flag: Option<PathBuf>) -> Self {
        let env_var = std::env::var_os("ORT_DYLIB_PATH")
            .filter(|value| !value.is_empty())
            .map(PathBuf::from);
        let setup_dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(SETUP_DIR));
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        Self {
            flag,
            env_var,
            setup_dir,
            exe_dir,
        }
    }

    /// Every candidate, in the order they are tried.
    pub fn candidates(&self) -> Vec<Candidate> {
        let mut candidates = Vec::new();
        let mut push = |path: PathBuf, source| candidates.push(Candidate { path, source });
        if let Some(path) = &self.flag {
            push(path.clone(), Source::Flag);
        }
        if let Some(path) = &self.env_var {
            push(path.clone(), Source::EnvVar);
        }
        if let Some(dir) = &self.exe_dir {
            push(dir.join(LIBRARY_FILE), Source::ExeDir);
            // The name `ort`'s own download (feature `download-ort`) copies.
            push(dir.join("libonnxruntime.so"), Source::ExeDir);
        }
        if let Some(dir) = &self.setup_dir {
            push(dir.join(LIBRARY_FILE), Source::SetupDir);
        }
        candidates
    }

    /// The first candidate that exists. A path named explicitly (flag or
    /// environment) must exist: falling back to another library behind the
    /// user's back would hide their mistake.
    pub fn resolve(&self) -> Result<Candidate, RuntimeError> {
        let mut tried = Vec::new();
        for candidate in self.candidates() {
            let explicit = matches!(candidate.source, Source::Flag | Source::EnvVar);
            if candidate.path.is_file() {
                return Ok(candidate);
            }
            tried.push(format!("{} ({})", candidate.path.display(), candidate.source));
            if explicit {
                return Err(RuntimeError::Unusable {
                    path: candidate.path,
                    source_kind: candidate.source,
                    reason: "no such file".to_owned(),
                });
            }
        }
        Err(RuntimeError::NotFound {
            tried: tried.join(", "),
        })
    }
}

/// A loaded runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The `ort` environment that sessions are created in.
    pub environment: ort::environment::Environment,
    /// The library file in use.
    pub path: PathBuf,
    /// Where it was found.
    pub source: Source,
    /// Its version string, such as `1.31.1`.
    pub version: String,
}

/// Resolves the library, checks it, and hands it to `ort`. Call once, before
/// any other `ort` use; later calls in the same process reuse the first load.
pub fn load(lookup: &Lookup) -> Result<Runtime, RuntimeError> {
    let candidate = lookup.resolve()?;
    let unusable = |reason: String| RuntimeError::Unusable {
        path: candidate.path.clone(),
        source_kind: candidate.source,
        reason,
    };
    let version = probe(&candidate.path).map_err(unusable)?;
    let environment = ort::init_from(&candidate.path)
        .map_err(|error| unusable(error.to_string()))?
        .with_name("loupe")
        .with_telemetry(false)
        .build()
        .map_err(|error| unusable(error.to_string()))?;
    Ok(Runtime {
        environment,
        path: candidate.path,
        source: candidate.source,
        version,
    })
}

/// Opens the library and checks what `ort` would otherwise assert on: the
/// `OrtGetApiBase` symbol, a well-formed version at least
/// 1.[`MIN_MINOR_VERSION`], and a non-null API table for our API version.
/// Returns the version string.
pub fn probe(path: &Path) -> Result<String, String> {
    // SAFETY: loading a shared library runs its initialisers. The file is
    // the user's chosen ONNX Runtime; that is the trust `ort` needs anyway.
    let library =
        unsafe { libloading::Library::new(path) }.map_err(|error| format!("cannot open it: {error}"))?;
    // SAFETY: the symbol's type is the one ONNX Runtime's C API declares.
    let get_api_base =
        unsafe { library.get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase") }
            .map_err(|_| "it does not export OrtGetApiBase (not an ONNX Runtime library)".to_owned())?;
    // SAFETY: a plain C call with no arguments, per the C API.
    let base = unsafe { get_api_base() };
    if base.is_null() {
        return Err("OrtGetApiBase returned null".to_owned());
    }
    // SAFETY: `base` is non-null and points to the library's static
    // OrtApiBase; GetVersionString returns a static NUL-terminated string.
    let version = unsafe {
        let raw: *const c_char = ((*base).GetVersionString)();
        if raw.is_null() {
            return Err("it reports no version".to_owned());
        }
        CStr::from_ptr(raw).to_string_lossy().into_owned()
    };
    check_version(&version)?;
    // SAFETY: as above; GetApi returns null for API versions it lacks.
    let api = unsafe { ((*base).GetApi)(ort::sys::ORT_API_VERSION) };
    if api.is_null() {
        return Err(format!(
            "version {version} does not provide API version {}",
            ort::sys::ORT_API_VERSION
        ));
    }
    Ok(version)
}

/// Accepts `1.N.x` with N at least [`MIN_MINOR_VERSION`].
pub fn check_version(version: &str) -> Result<(), String> {
    let mut parts = version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(1)), Some(Ok(minor))) if minor >= MIN_MINOR_VERSION => Ok(()),
        (Some(Ok(_)), Some(Ok(_))) => Err(format!(
            "version {version} is too old, Loupe needs 1.{MIN_MINOR_VERSION} or newer"
        )),
        _ => Err(format!("malformed version string {version:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(dir: &Path) -> Lookup {
        Lookup {
            flag: None,
            env_var: None,
            setup_dir: Some(dir.join("setup")),
            exe_dir: Some(dir.join("bin")),
        }
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"not a library").unwrap();
    }

    #[test]
    fn order_is_flag_env_exe_setup() {
        let dir = tempfile::tempdir().unwrap();
        let mut lookup = lookup(dir.path());
        lookup.flag = Some(dir.path().join("flag.so"));
        lookup.env_var = Some(dir.path().join("env.so"));
        let sources: Vec<Source> = lookup.candidates().iter().map(|c| c.source).collect();
        assert_eq!(
            sources,
            [
                Source::Flag,
                Source::EnvVar,
                Source::ExeDir,
                Source::ExeDir,
                Source::SetupDir
            ]
        );
    }

    #[test]
    fn first_existing_candidate_wins() {
        let dir = tempfile::tempdir().unwrap();
        let lookup = lookup(dir.path());
        touch(&dir.path().join("setup").join(LIBRARY_FILE));
        assert_eq!(lookup.resolve().unwrap().source, Source::SetupDir);
        touch(&dir.path().join("bin").join(LIBRARY_FILE));
        assert_eq!(lookup.resolve().unwrap().source, Source::ExeDir);
        let mut with_env = lookup;
        with_env.env_var = Some(dir.path().join("env.so"));
        touch(&dir.path().join("env.so"));
        assert_eq!(with_env.resolve().unwrap().source, Source::EnvVar);
        let mut with_flag = with_env;
        with_flag.flag = Some(dir.path().join("flag.so"));
        touch(&dir.path().join("flag.so"));
        assert_eq!(with_flag.resolve().unwrap().source, Source::Flag);
    }

    #[test]
    fn a_missing_explicit_path_does_not_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut lookup = lookup(dir.path());
        touch(&dir.path().join("setup").join(LIBRARY_FILE));
        lookup.flag = Some(dir.path().join("typo.so"));
        let error = lookup.resolve().unwrap_err().to_string();
        assert!(error.contains("typo.so"), "{error}");
        assert!(error.contains("--onnxruntime"), "{error}");
    }

    #[test]
    fn nothing_found_names_every_path_and_the_fix_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let error = lookup(dir.path()).resolve().unwrap_err().to_string();
        assert!(!error.contains('\n'));
        assert!(error.contains(&dir.path().join("setup").join(LIBRARY_FILE).display().to_string()));
        assert!(error.contains(&dir.path().join("bin").join(LIBRARY_FILE).display().to_string()));
        assert!(error.contains("make setup"), "{error}");
    }

    #[test]
    fn a_file_that_is_not_a_library_is_unusable_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("setup").join(LIBRARY_FILE);
        touch(&path);
        let reason = probe(&path).unwrap_err();
        assert!(reason.contains("cannot open it"), "{reason}");
    }

    #[test]
    fn versions_older_than_the_api_are_refused() {
        assert!(check_version(&format!("1.{MIN_MINOR_VERSION}.0")).is_ok());
        assert!(check_version(&format!("1.{}.2", MIN_MINOR_VERSION + 1)).is_ok());
        let old = check_version(&format!("1.{}.1", MIN_MINOR_VERSION - 1)).unwrap_err();
        assert!(old.contains("too old"), "{old}");
        assert!(check_version("0.99.0").unwrap_err().contains("too old"));
        assert!(check_version("garbage").unwrap_err().contains("malformed"));
    }
}
