//! `berthctl convert`: a Compose file (the Compose Specification, parsed
//! with the `docker-compose-types` crate after interpolation) to a Berth
//! manifest. Every key Berth can express is mapped; every other key becomes
//! a [`Note`] with its line and column and what to do instead; choices the
//! converter made are written as comments in the output, which must validate.

mod interpolate;
mod map;
mod positions;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use interpolate::{interpolate, parse_dotenv, InterpolateError};
pub use positions::Positions;

/// Why a Compose file could not be converted at all (per-key problems are
/// [`Note`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: not a Compose file: {message}")]
    Yaml {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}:{line}:{column}: {key}: {source}")]
    Interpolate {
        file: String,
        line: usize,
        column: usize,
        key: String,
        source: InterpolateError,
    },
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Shape {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("{file}: no services to convert{why}")]
    NoServices { file: String, why: String },
}

/// How a conversion is run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Active profiles (`--profile`, and `COMPOSE_PROFILES`).
    pub profiles: Vec<String>,
    /// The environment interpolation reads first (the process's); a `.env`
    /// next to the Compose file fills in what it lacks, as Compose does.
    pub env: BTreeMap<String, String>,
}

/// What a note is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    /// A key Berth cannot express: dropped (an error with `--strict`).
    Unsupported,
    /// Converted, with a choice or a difference the user should know.
    Changed,
}

/// One note about the input, located in it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Note {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The dotted key path, e.g. `services.web.build`.
    pub key: String,
    pub kind: NoteKind,
    pub message: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            NoteKind::Unsupported => "not converted",
            NoteKind::Changed => "note",
        };
        write!(
            f,
            "{}:{}:{}: {what}: {}: {}",
            self.file, self.line, self.column, self.key, self.message
        )
    }
}

/// The result: the manifest text, the notes, and the services converted.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The project name (`name:`, else the Compose file's directory name).
    pub project: String,
    pub toml: String,
    pub notes: Vec<Note>,
    pub services: Vec<String>,
}

/// Converts the Compose file at `path` (its `.env` and relative paths are
/// read from its directory).
pub fn convert_file(path: &Path, opts: &Options) -> Result<Converted, ComposeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ComposeError::Read {
        path: path.into(),
        source,
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let dotenv = match std::fs::read_to_string(dir.join(".env")) {
        Ok(t) => parse_dotenv(&t),
        Err(_) => BTreeMap::new(),
    };
    convert_str(&path.display().to_string(), &text, &dir, &dotenv, opts)
}

/// Converts Compose `text` (named `file` in notes), with relative paths
/// against `dir` and `dotenv` under the process environment.
pub fn convert_str(
    file: &str,
    text: &str,
    dir: &Path,
    dotenv: &BTreeMap<String, String>,
    opts: &Options,
) -> Result<Converted, ComposeError> {
    let positions = Positions::of(text);
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ComposeError::Yaml {
            file: file.into(),
            line: e.location().map_or(1, |l| l.line()),
            column: e.location().map_or(1, |l| l.column()),
            message: e.to_string(),
        })?;
    let mut vars = dotenv.clone();
    vars.extend(opts.env.clone());
    let mut unset = Vec::new();
    let mut unset_at = Vec::new();
    interpolate_value(
        &mut value,
        "",
        &vars,
        &mut unset,
        &mut unset_at,
        file,
        &positions,
    )?;
    let mut profiles = opts.profiles.clone();
    if let Some(p) = vars.get("COMPOSE_PROFILES") {
        profiles.extend(
            p.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
    }
    let project = value
        .get("name")
        .and_then(|v| v.as_str())
        .map(String::from)
        .unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "compose".into())
        });
    let mut ctx = map::Ctx {
        file: file.to_string(),
        dir: dir.to_path_buf(),
        positions,
        notes: Vec::new(),
        env: vars,
    };
    for (name, at) in unset.iter().zip(&unset_at) {
        ctx.note(
            at,
            NoteKind::Changed,
            format!("variable {name} is not set: a blank string was used (as Compose does)"),
        );
    }
    let (toml, services) = map::convert(&mut ctx, &value, &profiles)?;
    if services.is_empty() {
        return Err(ComposeError::NoServices {
            file: file.into(),
            why: if profiles.is_empty() {
                " (services with `profiles:` need --profile)".into()
            } else {
                String::new()
            },
        });
    }
    let mut notes = ctx.notes;
    notes.sort_by_key(|n| (n.line, n.column));
    Ok(Converted {
        project: map::service_name(&project),
        toml,
        notes,
        services,
    })
}

/// Interpolates every string scalar of `v` (keys stay as written).
fn interpolate_value(
    v: &mut serde_yaml::Value,
    path: &str,
    vars: &BTreeMap<String, String>,
    unset: &mut Vec<String>,
    unset_at: &mut Vec<String>,
    file: &str,
    positions: &Positions,
) -> Result<(), ComposeError> {
    use serde_yaml::Value;
    let child = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::String(s) => {
            *s = interpolate(s, vars, unset).map_err(|source| {
                let (line, column) = positions.at(path);
                ComposeError::Interpolate {
                    file: file.into(),
                    line,
                    column,
                    key: path.into(),
                    source,
                }
            })?;
            // Where each unset variable is first used, for its note.
            while unset_at.len() < unset.len() {
                unset_at.push(path.to_string());
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(
                    item,
                    &child(&i.to_string()),
                    vars,
                    unset,
                    unset_at,
                    file,
                    positions,
                )?;
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = map::key_text(k);
                // `x-` extensions are templates for anchors, not read.
                if path.is_empty() && key.starts_with("x-") {
                    continue;
                }
                interpolate_value(item, &child(&key), vars, unset, unset_at, file, positions)?;
            }
        }
        Value::Tagged(t) => {
            interpolate_value(&mut t.value, path, vars, unset, unset_at, file, positions)?;
        }
        _ => {}
    }
    Ok(())
}
