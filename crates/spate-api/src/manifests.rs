//! Manifests as users hand them over: files, directories of `.yaml`/`.yml`/`.json`
//! files (in name order), or `-` for standard input, joined as one multi-document text.
//! Shared by `spate serve -f` and the CLI's `apply`, `delete` and `validate`.

use std::path::{Path, PathBuf};

/// A manifest source that could not be read, naming it.
#[derive(Debug, thiserror::Error)]
#[error("reading {what}: {source}")]
pub struct ReadError {
    what: String,
    #[source]
    source: std::io::Error,
}

fn read(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|source| ReadError { what: path.display().to_string(), source })
}

/// Reads every manifest `paths` names, joined with `---` separators.
pub fn read_manifests(paths: &[PathBuf]) -> Result<String, ReadError> {
    let mut docs = vec![];
    for p in paths {
        if p.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|source| ReadError { what: "standard input".into(), source })?;
            docs.push(s);
        } else if p.is_dir() {
            let dir = std::fs::read_dir(p)
                .map_err(|source| ReadError { what: format!("directory {}", p.display()), source })?;
            let mut files: Vec<PathBuf> = dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                .collect();
            files.sort();
            for f in files {
                docs.push(read(&f)?);
            }
        } else {
            docs.push(read(p)?);
        }
    }
    Ok(docs.join("\n---\n"))
}

/// Read-only kinds derived from Services, as Knative shows them (Revision,
/// Configuration, Route): served by the server, named by the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    Revision,
    Configuration,
    Route,
}

impl Derived {
    pub fn from_plural(s: &str) -> Option<Derived> {
        match s.to_ascii_lowercase().as_str() {
            "revision" | "revisions" | "rev" => Some(Derived::Revision),
            "configuration" | "configurations" | "config" => Some(Derived::Configuration),
            "route" | "routes" => Some(Derived::Route),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Derived::Revision => "Revision",
            Derived::Configuration => "Configuration",
            Derived::Route => "Route",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Derived::Revision => "revisions",
            Derived::Configuration => "configurations",
            Derived::Route => "routes",
        }
    }
}
