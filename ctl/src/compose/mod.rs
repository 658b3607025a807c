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
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{file}:{line}:{column}: not a Compose file: {message}")]
    Yaml {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}:{line}:{column}: {key}: {error}")]
    Interpolate {
        file: String,
        line: usize,
        column: usize,
        key: String,
        error: InterpolateError,
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
    let read = if path.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map(|_| t)
    } else {
        std::fs::read_to_string(path)
    };
    let text = read.map_err(|error| ComposeError::Read {
        path: path.into(),
        error,
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
    let mut converted = convert_str(&path.display().to_string(), &text, &dir, &dotenv, opts)?;
    for name in [
        "compose.override.yaml",
        "compose.override.yml",
        "docker-compose.override.yml",
        "docker-compose.override.yaml",
    ] {
        if path.as_os_str() != "-" && dir.join(name).is_file() {
            converted.notes.insert(0, Note {
                file: path.display().to_string(),
                line: 1,
                column: 1,
                key: name.into(),
                kind: NoteKind::Unsupported,
                message: format!("{name} beside this file is not merged (Compose merges it by default): merge it into this file first, or convert it on its own"),
            });
        }
    }
    Ok(converted)
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
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let positions = Positions::of(text);
    let yaml_err = |e: serde_yaml::Error| ComposeError::Yaml {
        file: file.into(),
        line: e.location().map_or(1, |l| l.line()),
        column: e.location().map_or(1, |l| l.column()),
        message: e.to_string(),
    };
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(yaml_err)?;
    // `<<: *base` merge keys, as Compose applies them.
    value.apply_merge().map_err(yaml_err)?;
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
    let mut retyped = None;
    match v {
        Value::String(s) => {
            let had_variable = s.contains('$');
            *s = interpolate(s, vars, unset).map_err(|error| {
                let (line, column) = positions.at(path);
                ComposeError::Interpolate {
                    file: file.into(),
                    line,
                    column,
                    key: path.into(),
                    error,
                }
            })?;
            // Compose casts interpolated values of typed keys after
            // interpolation (`replicas: ${N:-2}`, `read_only: ${RO:-true}`).
            if had_variable && map::TYPED_KEYS.contains(&path.rsplit('.').next().unwrap_or("")) {
                if let Ok(typed @ (Value::Number(_) | Value::Bool(_))) =
                    serde_yaml::from_str::<Value>(s)
                {
                    retyped = Some(typed);
                }
            }
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
    if let Some(t) = retyped {
        *v = t;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::manifest::{
        HealthCheck, Manifest, RestartPolicy, UpdateStrategy, VolumeSource,
    };
    use std::time::Duration;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/compose")
            .join(name)
            .join("compose.yaml")
    }

    /// Converts a fixture with `env` as the process environment; the
    /// output must validate.
    fn convert(name: &str, env: &[(&str, &str)], profiles: &[&str]) -> (Converted, Manifest) {
        let opts = Options {
            profiles: profiles.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let c = convert_file(&fixture(name), &opts).unwrap();
        let m = Manifest::from_str_named("out.toml", &c.toml)
            .unwrap_or_else(|e| panic!("{name} does not validate:\n{e}\n{}", c.toml));
        (c, m)
    }

    fn notes_at(c: &Converted, kind: NoteKind) -> Vec<(usize, usize, String)> {
        c.notes
            .iter()
            .filter(|n| n.kind == kind)
            .map(|n| (n.line, n.column, n.key.clone()))
            .collect()
    }

    #[test]
    fn the_web_db_cache_stack_converts_whole() {
        let (c, m) = convert("stack", &[("REGISTRY", "reg.test:5000")], &[]);
        assert_eq!(c.project, "shop");
        assert_eq!(c.services, ["web", "db", "cache"]);
        assert!(
            notes_at(&c, NoteKind::Unsupported).is_empty(),
            "{:?}",
            c.notes
        );
        let web = &m.services["web"];
        assert_eq!(web.image.to_string(), "reg.test:5000/shop/busybox:1");
        assert_eq!(web.env["GREETING"], "hello");
        assert_eq!(web.depends_on, ["cache", "db"]);
        assert_eq!(web.ports[0].host, Some(18080));
        assert_eq!(web.ports[0].host_ip.to_string(), "127.0.0.1");
        // `$$` is a literal `$` for the shell in the container.
        assert!(web.command.as_ref().unwrap()[2].contains("$(wget -qO- http://db:5432/state)"));
        let db = &m.services["db"];
        assert_eq!(db.volumes[0].source, VolumeSource::Named("dbdata".into()));
        assert_eq!(db.update.strategy, UpdateStrategy::StopFirst);
        assert!(c
            .toml
            .contains("# updates stop-first: volume `dbdata` at /data"));
        let h = db.health.as_ref().unwrap();
        assert_eq!(
            h.check,
            HealthCheck::Exec {
                command: vec![
                    "wget".into(),
                    "-qO-".into(),
                    "http://127.0.0.1:5432/state".into()
                ]
            }
        );
        assert_eq!(
            (h.interval, h.timeout, h.retries),
            (Duration::from_secs(1), Duration::from_secs(2), 10)
        );
        let cache = &m.services["cache"];
        assert!(cache.readonly_rootfs);
        assert_eq!(
            cache.volumes[0].source,
            VolumeSource::Tmpfs {
                size_bytes: 8 << 20
            }
        );
        assert_eq!(cache.restart.policy, RestartPolicy::Always);
    }

    #[test]
    fn profiles_and_interpolation_follow_compose() {
        // .env gives APP_TAG, DB_USER, APP_PORT; the environment wins over it.
        let (c, m) = convert("profiles", &[("APP_PORT", "7000")], &[]);
        assert_eq!(c.services, ["app", "db"], "`debug` needs its profile");
        let app = &m.services["app"];
        assert_eq!(app.image.to_string(), "registry.example/app:2.1");
        assert_eq!(app.ports[0].host, Some(7000));
        assert_eq!(app.env["LOG_LEVEL"], "info");
        assert_eq!(app.env["DSN"], "postgres://shop@db/app");
        assert_eq!(app.env["LITERAL"], "costs $5");
        assert_eq!(app.env["OPTIONAL"], "");
        assert_eq!(
            m.services["db"].image.to_string(),
            "docker.io/library/postgres:16"
        );
        assert_eq!(
            m.services["db"].restart.policy,
            RestartPolicy::Never,
            "Compose's default"
        );
        let (c, m) = convert("profiles", &[("OPTIONAL", "x")], &["debug"]);
        assert_eq!(c.services, ["app", "db", "debug"]);
        assert_eq!(m.services["debug"].depends_on, ["app"]);
        assert_eq!(m.services["app"].env["OPTIONAL"], "is-set");
        assert_eq!(m.services["app"].ports[0].host, Some(9090), "from .env");
        // A required variable that is missing fails, naming where.
        let text = std::fs::read_to_string(fixture("profiles")).unwrap();
        let e = convert_str(
            "compose.yaml",
            &text,
            Path::new("/srv"),
            &BTreeMap::new(),
            &Options::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "compose.yaml:5:5: services.app.image: required variable APP_TAG is missing a value: set APP_TAG in .env"
        );
    }

    #[test]
    fn deploy_keys_map_to_replicas_resources_and_update() {
        let (_, m) = convert("deploy", &[], &[]);
        let api = &m.services["api"];
        assert_eq!(api.replicas, 3);
        assert_eq!(api.resources.memory_bytes, Some(1 << 30));
        assert_eq!(api.resources.millicpus, Some(1500));
        assert_eq!(api.resources.pids, Some(200));
        assert_eq!(api.update.strategy, UpdateStrategy::StartFirst);
        assert_eq!(api.update.max_surge, 2);
        assert!(api.update.rollback_on_failure);
        assert_eq!(api.update.probation, Duration::from_secs(30));
        assert_eq!(api.restart.policy, RestartPolicy::OnFailure);
        let w = &m.services["worker"];
        assert_eq!(w.replicas, 2);
        assert_eq!(w.resources.memory_bytes, Some(512 << 20));
        assert_eq!(w.resources.millicpus, Some(250));
        assert_eq!(w.resources.pids, Some(50));
        assert_eq!(w.stop_signal.as_ref().unwrap().name, "SIGINT");
        assert_eq!(w.stop_timeout, Duration::from_secs(45));
        assert_eq!(w.user.as_deref(), Some("1000:1000"));
        assert_eq!(w.workdir.as_deref(), Some("/srv"));
        assert!(w.init);
        assert_eq!(w.cap_add, ["NET_ADMIN"]);
        assert_eq!(w.cap_drop, ["CHOWN"]);
        assert_eq!(w.seccomp.as_str(), "unconfined");
        assert_eq!(w.userns.as_str(), "host");
        assert_eq!(w.sysctls["net.core.somaxconn"], "1024");
        assert_eq!(w.update.strategy, UpdateStrategy::StopFirst);
        assert!(!w.update.rollback_on_failure);
    }

    #[test]
    fn healthchecks_and_depends_on_conditions() {
        let (c, m) = convert("health", &[], &[]);
        let db = m.services["db"].health.as_ref().unwrap();
        assert_eq!(
            db.check,
            HealthCheck::Exec {
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "pg_isready -U postgres".into()
                ]
            }
        );
        assert_eq!(
            (db.interval, db.timeout, db.retries),
            (Duration::from_secs(2), Duration::from_secs(1), 15)
        );
        assert_eq!(db.start_period, Duration::from_secs(10));
        // A string test is CMD-SHELL; Compose's defaults fill the rest.
        let cache = m.services["cache"].health.as_ref().unwrap();
        assert_eq!(
            cache.check,
            HealthCheck::Exec {
                command: vec!["/bin/sh".into(), "-c".into(), "redis-cli ping".into()]
            }
        );
        assert_eq!(
            (cache.interval, cache.retries),
            (Duration::from_secs(30), 3)
        );
        assert_eq!(m.services["api"].depends_on, ["cache", "db"]);
        assert!(m.services["web"].health.is_none());
        assert_eq!(m.services["web"].depends_on, ["api"]);
        assert_eq!(m.services["migrate"].restart.policy, RestartPolicy::Never);
        assert!(m.services["seeded"].depends_on.is_empty());
        assert_eq!(
            notes_at(&c, NoteKind::Unsupported),
            [
                (26, 5, "services.web.healthcheck".to_string()),
                (36, 7, "services.seeded.depends_on.migrate".to_string())
            ]
        );
    }

    #[test]
    fn every_port_and_volume_form() {
        let (c, m) = convert("ports-volumes", &[], &[]);
        let app = &m.services["app"];
        let ports: Vec<(u16, Option<u16>, String, &str)> = app
            .ports
            .iter()
            .map(|p| {
                (
                    p.container,
                    p.host,
                    p.host_ip.to_string(),
                    p.protocol.as_str(),
                )
            })
            .collect();
        let any = "0.0.0.0".to_string();
        let lo = "127.0.0.1".to_string();
        for want in [
            (3000, None, any.clone(), "tcp"),
            (3001, None, any.clone(), "tcp"),
            (3002, None, any.clone(), "tcp"),
            (8000, Some(8000), any.clone(), "tcp"),
            (8080, Some(9090), any.clone(), "tcp"),
            (8081, Some(9091), any.clone(), "tcp"),
            (22, Some(49100), any.clone(), "tcp"),
            (8001, Some(8001), lo.clone(), "tcp"),
            (5000, Some(5000), lo.clone(), "tcp"),
            (5001, Some(5001), lo.clone(), "tcp"),
            (6060, Some(6060), any.clone(), "udp"),
            (7000, None, any.clone(), "tcp"),
            (7100, None, any.clone(), "tcp"),
            (7200, None, any.clone(), "udp"),
        ] {
            assert!(ports.contains(&want), "{want:?} in {ports:?}");
        }
        assert_eq!(ports.len(), 14, "{ports:?}");
        let dir = std::path::absolute(fixture("ports-volumes").parent().unwrap()).unwrap();
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let vols: Vec<(VolumeSource, &str, bool)> = app
            .volumes
            .iter()
            .map(|v| (v.source.clone(), v.target.as_str(), v.readonly))
            .collect();
        let norm = |p: PathBuf| super::map::tests_normalize(&p);
        for want in [
            (VolumeSource::Named("data".into()), "/data", false),
            (VolumeSource::Host("/srv/static".into()), "/static", true),
            (
                VolumeSource::Host(norm(dir.join("config"))),
                "/etc/app",
                false,
            ),
            (VolumeSource::Host(format!("{home}/cache")), "/cache", false),
            (VolumeSource::Named("app_var_run".into()), "/var/run", false),
            (VolumeSource::Named("logs".into()), "/logs", true),
            (
                VolumeSource::Tmpfs {
                    size_bytes: 64 << 20,
                },
                "/tmp",
                false,
            ),
            (
                VolumeSource::Tmpfs {
                    size_bytes: 16 << 20,
                },
                "/run",
                false,
            ),
        ] {
            assert!(vols.contains(&want), "{want:?} in {vols:?}");
        }
        let long = &m.services["long"];
        assert_eq!(long.ports.len(), 3);
        assert_eq!(
            (long.ports[0].container, long.ports[0].host),
            (80, Some(8080))
        );
        assert_eq!(
            (
                long.ports[1].container,
                long.ports[1].host,
                long.ports[1].protocol.as_str()
            ),
            (53, Some(5353), "udp")
        );
        assert_eq!(
            long.volumes[0].source,
            VolumeSource::Named("shared-data2".into())
        );
        assert_eq!(
            long.volumes[1].source,
            VolumeSource::Host(norm(dir.join("static")))
        );
        assert!(long.volumes[1].readonly);
        assert_eq!(
            long.volumes[2].source,
            VolumeSource::Tmpfs {
                size_bytes: 10 << 20
            }
        );
        // The IPv6 address is the one thing not converted.
        assert_eq!(
            notes_at(&c, NoteKind::Unsupported),
            [(14, 9, "services.app.ports.8".to_string())]
        );
    }

    #[test]
    fn unsupported_keys_are_named_with_line_and_column() {
        let (c, m) = convert("unsupported", &[], &[]);
        assert_eq!(c.services, ["app", "nobuild"]);
        assert_eq!(
            m.services["app"].image.to_string(),
            "registry.example/app:1"
        );
        assert_eq!(
            notes_at(&c, NoteKind::Unsupported),
            [
                (8, 5, "services.app.network_mode".to_string()),
                (9, 5, "services.app.privileged".to_string()),
                (10, 5, "services.app.devices".to_string()),
                (12, 5, "services.app.extra_hosts".to_string()),
                (14, 5, "services.app.ulimits".to_string()),
                (16, 5, "services.app.pid".to_string()),
                (17, 5, "services.app.hostname".to_string()),
                (28, 1, "configs".to_string()),
            ]
        );
        let shown = c
            .notes
            .iter()
            .find(|n| n.key == "services.app.privileged")
            .unwrap()
            .to_string();
        assert!(shown.ends_with("compose.yaml:9:5: not converted: services.app.privileged: Berth never runs privileged containers: add the capabilities it needs with cap_add"), "{shown}");
        // Changed, not lost: build beside image, labels, logging, networks.
        let changed: Vec<String> = c
            .notes
            .iter()
            .filter(|n| n.kind == NoteKind::Changed)
            .map(|n| n.key.clone())
            .collect();
        for k in [
            "version",
            "services.app.build",
            "services.app.labels",
            "services.app.logging",
            "services.nobuild.build",
            "networks",
        ] {
            assert!(changed.iter().any(|c| c == k), "{k} in {changed:?}");
        }
    }

    #[test]
    fn a_service_without_an_image_is_left_out_and_named() {
        let text = "services:\n  app:\n    build: .\n  db:\n    image: postgres:16\n";
        let c = convert_str(
            "c.yaml",
            text,
            Path::new("/srv"),
            &BTreeMap::new(),
            &Options::default(),
        )
        .unwrap();
        assert_eq!(c.services, ["db"]);
        assert_eq!(
            notes_at(&c, NoteKind::Unsupported),
            [(2, 3, "services.app".to_string())]
        );
        let e = convert_str(
            "c.yaml",
            "services: [1, 2]\n",
            Path::new("/srv"),
            &BTreeMap::new(),
            &Options::default(),
        );
        assert!(e.is_err());
        let e = convert_str(
            "c.yaml",
            "services:\n  a: {image: x\n",
            Path::new("/srv"),
            &BTreeMap::new(),
            &Options::default(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("c.yaml:"), "{e}");
    }

    #[test]
    fn what_real_compose_files_do_converts() {
        // Merge keys, mixed short/long lists, interpolated numbers and
        // booleans, keys Berth has no equivalent for, and two names that
        // become the same DNS label (found by trying it as a user would).
        let text = r#"
x-base: &base
  image: busybox:1.36
  restart: always
services:
  a:
    <<: *base
    deploy:
      replicas: ${REPL:-2}
    read_only: ${RO:-true}
    ports:
      - "80:80"
      - target: 81
        published: 8081
        host_ip: 127.0.0.1
    dns: 1.1.1.1
    configs: [app]
    platform: linux/amd64
    pull_policy: never
    healthcheck:
      disable: true
  my_db:
    image: postgres:16
  my-db:
    image: postgres:16
"#;
        let opts = Options::default();
        let c = convert_str("c.yaml", text, Path::new("/srv"), &BTreeMap::new(), &opts).unwrap();
        let m = berth_core::manifest::Manifest::from_str_named("out.toml", &c.toml)
            .unwrap_or_else(|e| panic!("{e}\n{}", c.toml));
        assert_eq!(c.services, ["a", "my-db", "my-db-2"]);
        let a = &m.services["a"];
        assert_eq!(a.replicas, 2);
        assert!(a.readonly_rootfs);
        assert_eq!(
            a.restart.policy,
            RestartPolicy::Always,
            "from the merge key"
        );
        assert_eq!(a.pull.policy, berth_core::manifest::PullPolicy::Never);
        let ports: Vec<(u16, Option<u16>)> =
            a.ports.iter().map(|p| (p.container, p.host)).collect();
        assert_eq!(ports, [(80, Some(80)), (81, Some(8081))]);
        assert_eq!(a.ports[1].host_ip.to_string(), "127.0.0.1");
        let unsupported: Vec<String> = c
            .notes
            .iter()
            .filter(|n| n.kind == NoteKind::Unsupported)
            .map(|n| n.key.clone())
            .collect();
        for k in [
            "services.a.dns",
            "services.a.configs",
            "services.a.platform",
            "services.a.healthcheck",
        ] {
            assert!(unsupported.iter().any(|u| u == k), "{k} in {unsupported:?}");
        }
    }
}
