//! Validation: wire types → `Manifest`, collecting every problem with its
//! location. Rules live here and nowhere else; each is table-tested below.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::wire::*;
use super::*;
use crate::units::{parse_duration, parse_size};

const MAX_NAME_LEN: usize = 63;
const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 4096;
const MAX_ENV: usize = 1000;
const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
const MAX_MOUNTS: usize = 64;
const MAX_PATH_BYTES: usize = 4096;
const MIN_MEMORY: u64 = 6 << 20;

/// Linux signal names and numbers accepted for `stop_signal`.
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGSTKFLT", 16),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGTTIN", 21),
    ("SIGTTOU", 22),
    ("SIGURG", 23),
    ("SIGXCPU", 24),
    ("SIGXFSZ", 25),
    ("SIGVTALRM", 26),
    ("SIGPROF", 27),
    ("SIGWINCH", 28),
    ("SIGIO", 29),
    ("SIGPWR", 30),
    ("SIGSYS", 31),
];

/// Collects problems for one file.
struct FileCtx<'a> {
    file: &'a str,
    text: &'a str,
    problems: Vec<Problem>,
}

impl FileCtx<'_> {
    fn at(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.problems.push(Problem {
            file: self.file.to_string(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// The dotted key a serde error points at: the last table header before the
/// span, plus the key under the span when it is one.
pub(super) fn key_at(text: &str, span: &Range<usize>) -> String {
    let start = span.start.min(text.len());
    let mut header = String::new();
    for line in text[..start].lines() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("[[").and_then(|t| t.split("]]").next()) {
            header = h.trim().to_string();
        } else if let Some(h) = t.strip_prefix('[').and_then(|t| t.split(']').next()) {
            header = h.trim().to_string();
        }
    }
    let end = span.end.min(text.len()).max(start);
    let under = text[start..end].trim();
    let is_key = !under.is_empty()
        && under.len() <= 64
        && under
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (header.is_empty(), is_key) {
        (true, true) => under.to_string(),
        (false, true) => format!("{header}.{under}"),
        (_, false) => header,
    }
}

pub(super) fn validate_sources(files: &SourceFiles) -> Result<Manifest, ManifestError> {
    let mut problems = Vec::new();
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    // Where each service and host port was first defined, for duplicate errors.
    let mut defined_in: BTreeMap<String, String> = BTreeMap::new();
    let mut published: Vec<(Port, String, String)> = Vec::new();
    let mut depends: Vec<(String, Vec<(String, Location)>)> = Vec::new();
    let mut writers: BTreeMap<String, Vec<VolumeUse>> = BTreeMap::new();
    let mut fleet: Option<(FleetPolicy, String)> = None;

    for (file, text) in files {
        let mut ctx = FileCtx {
            file,
            text,
            problems: Vec::new(),
        };
        let read = super::lenient::read(text);
        for (span, key, message) in read.problems {
            ctx.at(span, key, message);
        }
        if let Some((span, wf)) = &read.fleet {
            if let Some((_, first)) = &fleet {
                ctx.at(
                    span.clone(),
                    "fleet",
                    format!("[fleet] is defined in both {first} and {file}"),
                );
            } else {
                fleet = Some((validate_fleet(&mut ctx, wf), file.clone()));
            }
        }
        {
            {
                for (name, ws) in read.services {
                    let key = format!("service.{}", name.get_ref());
                    if let Some(first) = defined_in.get(name.get_ref()) {
                        ctx.at(
                            name.span(),
                            key,
                            format!(
                                "service `{}` is defined in both {first} and {file}",
                                name.get_ref()
                            ),
                        );
                        continue;
                    }
                    let deps_written: Vec<(String, Location)> = ws
                        .depends_on
                        .as_ref()
                        .map(|d| {
                            d.get_ref()
                                .iter()
                                .map(|n| (n.get_ref().clone(), Location::of(file, text, n.span())))
                                .collect()
                        })
                        .unwrap_or_default();
                    if let Some(svc) = validate_service(&mut ctx, &name, ws) {
                        for (i, port) in svc.ports.iter().enumerate() {
                            let Some(host) = port.host else { continue };
                            let clash = published.iter().find(|(p, _, _)| {
                                p.protocol == port.protocol
                                    && p.host == Some(host)
                                    && (p.host_ip == port.host_ip
                                        || p.host_ip.is_unspecified()
                                        || port.host_ip.is_unspecified())
                            });
                            if let Some((other, owner, other_file)) = clash {
                                let (line, column) = line_col(text, name.span().start);
                                ctx.problems.push(Problem {
                                    file: file.clone(),
                                    line,
                                    column,
                                    key: format!("{key}.ports[{i}].host"),
                                    message: format!(
                                        "host port {}:{host}/{} is already published by service `{owner}` ({other_file}) on {}",
                                        port.host_ip, port.protocol, other.host_ip
                                    ),
                                });
                            } else {
                                published.push((*port, svc.name.clone(), file.clone()));
                            }
                        }
                        depends.push((svc.name.clone(), deps_written));
                        for (i, v) in svc.volumes.iter().enumerate() {
                            let id = match &v.source {
                                VolumeSource::Named(n) => format!("volume `{n}`"),
                                VolumeSource::Host(h) => format!("host path `{h}`"),
                                VolumeSource::Tmpfs { .. } => continue,
                            };
                            let at = Location::of(file, text, name.span());
                            writers.entry(id).or_default().push((
                                svc.name.clone(),
                                i,
                                v.readonly,
                                v.single_writer(),
                                at,
                            ));
                        }
                        defined_in.insert(svc.name.clone(), file.clone());
                        services.insert(svc.name.clone(), svc);
                    } else {
                        defined_in.insert(name.get_ref().clone(), file.clone());
                    }
                }
            }
        }
        problems.extend(ctx.problems);
    }
    problems.extend(check_depends_on(&services, &depends));
    for (what, users) in &writers {
        // Readers are fine; two writers are not unless each says `shared`.
        let writing: Vec<&str> = users
            .iter()
            .filter(|u| !u.2)
            .map(|u| u.0.as_str())
            .collect();
        if writing.len() < 2 {
            continue;
        }
        let names = writing;
        for (svc, i, _, single, at) in users {
            if *single {
                problems.push(at.problem(
                    format!("service.{svc}.volumes[{i}]"),
                    format!("{what} is also mounted by {}; a writable volume has one writer at a time (mark it `shared = true` in every service that writes it, or `readonly = true` where it is only read)", names.iter().filter(|n| *n != svc).copied().collect::<Vec<_>>().join(", ")),
                ));
            }
        }
    }
    if services.len() > MAX_SERVICES {
        problems.push(Problem {
            file: files.keys().next().cloned().unwrap_or_default(),
            line: 1,
            column: 1,
            key: "service".into(),
            message: format!(
                "{} services defined; at most {MAX_SERVICES} are allowed",
                services.len()
            ),
        });
    }
    problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    if problems.is_empty() {
        Ok(Manifest {
            services,
            fleet: fleet.map(|(f, _)| f),
        })
    } else {
        Err(ManifestError::Invalid(problems))
    }
}

/// The `[fleet]` table: `max_parallel` 1..=10000, `groups` distinct valid
/// names, `bake` 0s..=24h.
fn validate_fleet(ctx: &mut FileCtx<'_>, w: &WireFleet) -> FleetPolicy {
    let max_parallel = w
        .max_parallel
        .as_ref()
        .and_then(|m| match u32::try_from(*m.get_ref()) {
            Ok(n) if (1..=MAX_FLEET_PARALLEL).contains(&n) => Some(n),
            _ => {
                ctx.at(
                    m.span(),
                    "fleet.max_parallel",
                    format!("{} is outside 1-{MAX_FLEET_PARALLEL}", m.get_ref()),
                );
                None
            }
        });
    let groups = w.groups.as_ref().map(|g| {
        let mut out: Vec<String> = Vec::new();
        if g.get_ref().is_empty() {
            ctx.at(g.span(), "fleet.groups", "list at least one group");
        }
        for (i, name) in g.get_ref().iter().enumerate() {
            let key = format!("fleet.groups[{i}]");
            if !valid_fleet_name(name.get_ref()) {
                ctx.at(
                    name.span(),
                    key,
                    format!(
                        "`{}` is not a group name (1-63 of A-Z a-z 0-9 . _ -)",
                        name.get_ref()
                    ),
                );
            } else if out.contains(name.get_ref()) {
                ctx.at(
                    name.span(),
                    key,
                    format!("group `{}` is listed twice", name.get_ref()),
                );
            } else {
                out.push(name.get_ref().clone());
            }
        }
        out
    });
    let bake = w.bake.as_ref().map(|b| {
        duration_or(
            ctx,
            Some(b),
            "fleet.bake",
            Duration::ZERO,
            Duration::ZERO,
            Duration::from_secs(24 * 3600),
        )
    });
    FleetPolicy {
        max_parallel,
        groups,
        bake,
        auto_revert: w.auto_revert,
    }
}

/// A named volume or host path mounted by a service: (service, volume index,
/// readonly, single writer, where the service is defined).
type VolumeUse = (String, usize, bool, bool, Location);

/// Where a value was written, kept for checks that span services.
#[derive(Debug, Clone)]
struct Location {
    file: String,
    line: usize,
    column: usize,
}

impl Location {
    fn of(file: &str, text: &str, span: Range<usize>) -> Self {
        let (line, column) = line_col(text, span.start);
        Location {
            file: file.to_string(),
            line,
            column,
        }
    }

    fn problem(&self, key: String, message: String) -> Problem {
        Problem {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            key,
            message,
        }
    }
}

/// `depends_on` across services: every name is a service of the manifest, not
/// the service itself, and the graph has no cycle (each cycle reported once,
/// at the edge that closes it, naming its path).
fn check_depends_on(
    services: &BTreeMap<String, Service>,
    depends: &[(String, Vec<(String, Location)>)],
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut edges: BTreeMap<&str, Vec<(&str, &Location)>> = BTreeMap::new();
    for (svc, deps) in depends {
        let key = format!("service.{svc}.depends_on");
        for (dep, at) in deps {
            if dep == svc {
                problems.push(at.problem(key.clone(), format!("`{svc}` depends on itself")));
            } else if !services.contains_key(dep) {
                let known: Vec<&str> = services.keys().map(String::as_str).collect();
                problems.push(at.problem(
                    key.clone(),
                    format!(
                        "`{dep}` is not a service of this manifest (services: {})",
                        known.join(", ")
                    ),
                ));
            } else {
                edges.entry(svc).or_default().push((dep, at));
            }
        }
    }
    // Depth-first search; an edge into a node on the current path closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        edges: &BTreeMap<&'a str, Vec<(&'a str, &'a Location)>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
        problems: &mut Vec<Problem>,
    ) {
        marks.insert(node, Mark::OnPath);
        path.push(node);
        for (dep, at) in edges.get(node).map(Vec::as_slice).unwrap_or_default() {
            match marks.get(dep) {
                Some(Mark::OnPath) => {
                    let start = path.iter().position(|n| n == dep).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[start..].to_vec();
                    cycle.push(dep);
                    problems.push(at.problem(
                        format!("service.{node}.depends_on"),
                        format!("dependency cycle: {}", cycle.join(" -> ")),
                    ));
                }
                Some(Mark::Done) => {}
                None => visit(dep, edges, marks, path, problems),
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let nodes: Vec<&str> = edges.keys().copied().collect();
    for node in nodes {
        if !marks.contains_key(node) {
            visit(node, &edges, &mut marks, &mut Vec::new(), &mut problems);
        }
    }
    problems
}

fn valid_service_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && !name.ends_with('-')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn valid_volume_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_user(user: &str) -> bool {
    let part_ok = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty()
            && b.len() <= 32
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    };
    match user.split_once(':') {
        Some((u, g)) => part_ok(u) && part_ok(g),
        None => part_ok(user),
    }
}

/// An absolute path with no `..`, no NUL and a sane length.
fn check_abs_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must be an absolute path");
    }
    if path.len() > MAX_PATH_BYTES || path.contains('\0') {
        return Err("path is too long or holds a NUL byte");
    }
    if path.split('/').any(|c| c == "..") {
        return Err("path must not contain `..`");
    }
    Ok(())
}

/// First and last real-time signal numbers as Docker (Go) names them:
/// `SIGRTMIN` is 34 (glibc keeps 32 and 33 for itself), `SIGRTMAX` 64.
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// The name Docker gives a real-time signal number: `SIGRTMIN+n` in the
/// lower half, `SIGRTMAX-n` in the upper half.
fn rt_name(number: i32) -> String {
    match number - SIGRTMIN {
        0 => "SIGRTMIN".into(),
        n if n <= 15 => format!("SIGRTMIN+{n}"),
        _ if number == SIGRTMAX => "SIGRTMAX".into(),
        _ => format!("SIGRTMAX-{}", SIGRTMAX - number),
    }
}

/// See [`Signal::parse`].
pub(crate) fn parse_signal(text: &str) -> Option<Signal> {
    let upper = text.trim().to_ascii_uppercase();
    let by_number = |n: i32| -> Option<Signal> {
        if (SIGRTMIN..=SIGRTMAX).contains(&n) {
            return Some(Signal {
                name: rt_name(n),
                number: n,
            });
        }
        SIGNALS
            .iter()
            .find(|(_, num)| *num == n)
            .map(|(name, number)| Signal {
                name: (*name).to_string(),
                number: *number,
            })
    };
    if let Ok(n) = upper.parse::<i32>() {
        return by_number(n);
    }
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rt = |base: i32, rest: &str, sign: i32| -> Option<Signal> {
        let offset = match rest {
            "" => 0,
            r => r
                .strip_prefix(if sign > 0 { '+' } else { '-' })?
                .parse::<i32>()
                .ok()?,
        };
        (1..=15).contains(&offset).then_some(())?;
        by_number(base + sign * offset)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return if rest.is_empty() {
            by_number(SIGRTMIN)
        } else {
            rt(SIGRTMIN, rest, 1)
        };
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return if rest.is_empty() {
            by_number(SIGRTMAX)
        } else {
            rt(SIGRTMAX, rest, -1)
        };
    }
    let name = format!("SIG{name}");
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, number)| Signal {
            name: (*n).to_string(),
            number: *number,
        })
}

/// Default values of a service's optional parts.
pub(crate) mod defaults {
    use std::time::Duration;

    pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    pub const HEALTH_RETRIES: u32 = 3;
    pub const DRAIN: Duration = Duration::from_secs(1);
    pub const PROBATION: Duration = Duration::from_secs(30);
    pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
    pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
}

fn validate_service(
    ctx: &mut FileCtx<'_>,
    name: &Spanned<String>,
    ws: WireService,
) -> Option<Service> {
    let before = ctx.problems.len();
    let svc = name.get_ref().clone();
    let k = |rest: &str| format!("service.{svc}.{rest}");
    if !valid_service_name(&svc) {
        ctx.at(
            name.span(),
            format!("service.{svc}"),
            format!("service name `{svc}` is invalid: 1-{MAX_NAME_LEN} of [a-z0-9-], starting with a letter or digit"),
        );
    }

    let image = match &ws.image {
        None => {
            ctx.at(name.span(), k("image"), "missing required key `image`");
            None
        }
        Some(img) => match ImageRef::parse(img.get_ref()) {
            Ok(r) => Some(r),
            Err(e) => {
                ctx.at(img.span(), k("image"), e.to_string());
                None
            }
        },
    };

    let replicas = match &ws.replicas {
        None => 1,
        Some(r) => match u32::try_from(*r.get_ref()) {
            Ok(n) if n <= MAX_REPLICAS => n,
            _ => {
                ctx.at(
                    r.span(),
                    k("replicas"),
                    format!("must be between 0 and {MAX_REPLICAS}"),
                );
                0
            }
        },
    };

    let entrypoint = ws.entrypoint.as_ref().map(|cmd| {
        if cmd.get_ref().is_empty() {
            return Vec::new();
        }
        check_argv(ctx, cmd, &k("entrypoint")).unwrap_or_default()
    });
    let command = ws.command.as_ref().map(|cmd| {
        let args = check_argv(ctx, cmd, &k("command"));
        args.unwrap_or_default()
    });
    let sysctls = ws
        .sysctls
        .as_ref()
        .map(|s| validate_sysctls(ctx, s, &k("sysctls")))
        .unwrap_or_default();
    let cap_add = ws
        .cap_add
        .as_ref()
        .map(|c| validate_caps(ctx, c, &k("cap_add")))
        .unwrap_or_default();
    let cap_drop = ws
        .cap_drop
        .as_ref()
        .map(|c| validate_caps(ctx, c, &k("cap_drop")))
        .unwrap_or_default();
    let seccomp = ws
        .seccomp
        .as_ref()
        .map(|s| validate_seccomp(ctx, s, &k("seccomp")))
        .unwrap_or_default();
    let userns = ws
        .userns
        .as_ref()
        .map(|s| validate_userns(ctx, s, &k("userns")))
        .unwrap_or_default();
    let depends_on: Vec<String> = ws
        .depends_on
        .as_ref()
        .map(|d| {
            let mut names: Vec<String> = d.get_ref().iter().map(|n| n.get_ref().clone()).collect();
            names.sort();
            names.dedup();
            names
        })
        .unwrap_or_default();

    let mut env = BTreeMap::new();
    if let Some(e) = &ws.env {
        if e.get_ref().len() > MAX_ENV {
            ctx.at(e.span(), k("env"), format!("more than {MAX_ENV} variables"));
        }
        for (key, value) in e.get_ref() {
            if !valid_env_name(key.get_ref()) {
                ctx.at(
                    key.span(),
                    k(&format!("env.{}", key.get_ref())),
                    format!(
                        "`{}` is not a valid variable name (1-256 bytes, no `=` or NUL)",
                        key.get_ref()
                    ),
                );
            }
            if value.get_ref().len() > MAX_ENV_VALUE_BYTES || value.get_ref().contains('\0') {
                ctx.at(
                    value.span(),
                    k(&format!("env.{}", key.get_ref())),
                    format!("value is longer than {MAX_ENV_VALUE_BYTES} bytes or holds a NUL byte"),
                );
            }
            env.insert(key.get_ref().clone(), value.get_ref().clone());
        }
    }

    let env_file = ws
        .env_file
        .as_ref()
        .and_then(|f| match check_abs_path(f.get_ref()) {
            Ok(()) => Some(PathBuf::from(f.get_ref())),
            Err(msg) => {
                ctx.at(f.span(), k("env_file"), msg);
                None
            }
        });

    let workdir = ws
        .workdir
        .as_ref()
        .and_then(|w| match check_abs_path(w.get_ref()) {
            Ok(()) => Some(w.get_ref().clone()),
            Err(msg) => {
                ctx.at(w.span(), k("workdir"), msg);
                None
            }
        });

    let user = ws.user.as_ref().and_then(|u| {
        if valid_user(u.get_ref()) {
            Some(u.get_ref().clone())
        } else {
            ctx.at(
                u.span(),
                k("user"),
                format!(
                    "`{}` is not `user`, `uid`, `user:group` or `uid:gid`",
                    u.get_ref()
                ),
            );
            None
        }
    });

    let stop_signal = ws.stop_signal.as_ref().map(|s| {
        parse_signal(s.get_ref()).unwrap_or_else(|| {
            ctx.at(
                s.span(),
                k("stop_signal"),
                format!("`{}` is not a known signal", s.get_ref()),
            );
            Signal::term()
        })
    });
    let stop_timeout = duration_or(
        ctx,
        ws.stop_timeout.as_ref(),
        &k("stop_timeout"),
        defaults::STOP_TIMEOUT,
        Duration::ZERO,
        Duration::from_secs(3600),
    );

    let resources = ws
        .resources
        .as_ref()
        .map(|r| validate_resources(ctx, r, &k("resources")))
        .unwrap_or_default();

    let ports = validate_ports(ctx, &ws, &svc);

    let health = ws
        .health
        .as_ref()
        .and_then(|h| validate_health(ctx, h, &k("health")));
    let (volumes, secrets) = validate_mounts(ctx, ws.volumes.as_ref(), ws.secrets.as_ref(), &svc);
    let single_writer = volumes.iter().find(|v| v.single_writer());
    let mut update = validate_update(ctx, ws.update.as_ref(), &k("update"), single_writer);
    if let Some(v) = single_writer {
        let what = volume_label(v);
        if replicas > 1 {
            let span = ws
                .replicas
                .as_ref()
                .map(|r| r.span())
                .unwrap_or(name.span());
            ctx.at(
                span,
                k("replicas"),
                format!(
                    "{replicas} replicas would write {what} at once; a writable volume has one writer at a time (set `shared = true` on the volume if its data is safe to share)"
                ),
            );
        }
        if update.strategy == UpdateStrategy::StartFirst {
            let span = ws
                .update
                .as_ref()
                .and_then(|u| u.get_ref().strategy.as_ref().map(|s| s.span()))
                .unwrap_or(name.span());
            ctx.at(
                span,
                k("update.strategy"),
                format!(
                    "start-first would run two containers on {what} at once; a service with a writable volume updates stop-first (set `shared = true` on the volume if its data is safe to share)"
                ),
            );
            update.strategy = UpdateStrategy::StopFirst;
        }
    }
    let restart = validate_restart(ctx, ws.restart.as_ref(), &k("restart"));

    let pull = {
        let policy = match ws.pull.as_ref().and_then(|p| p.policy.as_ref()) {
            None => PullPolicy::IfMissing,
            Some(p) => match p.get_ref().as_str() {
                "if-missing" => PullPolicy::IfMissing,
                "always" => PullPolicy::Always,
                "never" => PullPolicy::Never,
                other => {
                    ctx.at(
                        p.span(),
                        k("pull.policy"),
                        format!("`{other}` is not one of \"if-missing\", \"always\", \"never\""),
                    );
                    PullPolicy::IfMissing
                }
            },
        };
        let check = ws.pull.as_ref().and_then(|p| p.check.as_ref()).map(|c| {
            duration_or(
                ctx,
                Some(c),
                &k("pull.check"),
                Duration::from_secs(60),
                Duration::from_secs(1),
                Duration::from_secs(7 * 24 * 3600),
            )
        });
        Pull { policy, check }
    };

    if ctx.problems.len() > before {
        return None;
    }
    Some(Service {
        name: svc,
        file: ctx.file.to_string(),
        image: image?,
        replicas,
        entrypoint,
        command,
        env,
        env_file,
        workdir,
        user,
        readonly_rootfs: ws.readonly_rootfs.unwrap_or(false),
        stop_signal,
        stop_timeout,
        sysctls,
        depends_on,
        init: ws.init.unwrap_or(false),
        cap_add,
        cap_drop,
        seccomp,
        userns,
        resources,
        ports,
        health,
        update,
        restart,
        volumes,
        secrets,
        pull,
    })
}

/// What Docker, Compose and Kubernetes accept: non-empty, no `=`, no NUL
/// (`spring.profiles.active` and `my-feature-flag` included).
fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.contains(['=', '\0'])
}

fn check_argv(
    ctx: &mut FileCtx<'_>,
    argv: &Spanned<Vec<Spanned<String>>>,
    key: &str,
) -> Option<Vec<String>> {
    let items = argv.get_ref();
    let before = ctx.problems.len();
    if items.is_empty() {
        ctx.at(argv.span(), key, "must hold at least the program to run");
    }
    if items.len() > MAX_ARGS {
        ctx.at(argv.span(), key, format!("more than {MAX_ARGS} arguments"));
    }
    for arg in items {
        if arg.get_ref().len() > MAX_ARG_BYTES || arg.get_ref().contains('\0') {
            ctx.at(
                arg.span(),
                key,
                format!("an argument is longer than {MAX_ARG_BYTES} bytes or holds a NUL byte"),
            );
        }
    }
    if items.first().is_some_and(|a| a.get_ref().is_empty()) {
        ctx.at(argv.span(), key, "the program name is empty");
    }
    (ctx.problems.len() == before).then(|| items.iter().map(|a| a.get_ref().clone()).collect())
}

fn port_number(ctx: &mut FileCtx<'_>, value: &Spanned<i64>, key: &str) -> Option<u16> {
    match u16::try_from(*value.get_ref()) {
        Ok(p) if p >= 1 => Some(p),
        _ => {
            ctx.at(
                value.span(),
                key,
                format!("port {} is outside 1-65535", value.get_ref()),
            );
            None
        }
    }
}

fn duration_or(
    ctx: &mut FileCtx<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Duration {
    let Some(v) = value else { return default };
    match parse_duration(v.get_ref()) {
        Ok(d) if d >= min && d <= max => d,
        Ok(_) => {
            ctx.at(
                v.span(),
                key,
                format!(
                    "{} is outside {}-{}",
                    v.get_ref(),
                    crate::units::format_duration(min),
                    crate::units::format_duration(max)
                ),
            );
            default
        }
        Err(e) => {
            ctx.at(v.span(), key, e.to_string());
            default
        }
    }
}

/// Most ports one service may list.
const MAX_PORTS: usize = 64;

/// `ports` (Compose's long form) or the older single `port` table, which means
/// one TCP port published on every host address.
fn validate_ports(ctx: &mut FileCtx<'_>, ws: &WireService, svc: &str) -> Vec<Port> {
    let key = format!("service.{svc}");
    let mut out = Vec::new();
    if let (Some(_), Some(ports)) = (&ws.port, &ws.ports) {
        ctx.at(
            ports.span(),
            format!("{key}.ports"),
            "both `port` and `ports` are set; move the `port` table into `ports`",
        );
        return out;
    }
    if let Some(p) = &ws.port {
        let container = port_number(
            ctx,
            &p.get_ref().container,
            &format!("{key}.port.container"),
        );
        let host = port_number(ctx, &p.get_ref().host, &format!("{key}.port.host"));
        if let (Some(container), Some(host)) = (container, host) {
            out.push(Port {
                container,
                host: Some(host),
                host_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                protocol: Protocol::Tcp,
            });
        }
        return out;
    }
    let Some(ports) = &ws.ports else { return out };
    if ports.get_ref().len() > MAX_PORTS {
        ctx.at(
            ports.span(),
            format!("{key}.ports"),
            format!("more than {MAX_PORTS} ports"),
        );
    }
    for (i, p) in ports.get_ref().iter().enumerate() {
        let k = format!("{key}.ports[{i}]");
        let w = p.get_ref();
        let container = port_number(ctx, &w.container, &format!("{k}.container"));
        let host = match &w.host {
            None => Some(None),
            Some(h) => port_number(ctx, h, &format!("{k}.host")).map(Some),
        };
        let host_ip = match &w.host_ip {
            None => Some(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            Some(ip) => match ip.get_ref().parse::<std::net::IpAddr>() {
                Ok(addr @ std::net::IpAddr::V4(_)) => Some(addr),
                Ok(std::net::IpAddr::V6(_)) => {
                    ctx.at(ip.span(), format!("{k}.host_ip"), "IPv6 host addresses are not supported yet; give an IPv4 address such as \"127.0.0.1\" or \"0.0.0.0\"");
                    None
                }
                Err(_) => {
                    ctx.at(
                        ip.span(),
                        format!("{k}.host_ip"),
                        format!("`{}` is not an IP address", ip.get_ref()),
                    );
                    None
                }
            },
        };
        if let (Some(ip), None) = (&w.host_ip, &w.host) {
            ctx.at(
                ip.span(),
                format!("{k}.host_ip"),
                "`host_ip` needs a `host` port to publish",
            );
        }
        let protocol = match &w.protocol {
            None => Some(Protocol::Tcp),
            Some(pr) => match pr.get_ref().as_str() {
                "tcp" => Some(Protocol::Tcp),
                "udp" => Some(Protocol::Udp),
                other => {
                    ctx.at(
                        pr.span(),
                        format!("{k}.protocol"),
                        format!("`{other}` is not one of \"tcp\", \"udp\""),
                    );
                    None
                }
            },
        };
        if let (Some(container), Some(host), Some(host_ip), Some(protocol)) =
            (container, host, host_ip, protocol)
        {
            out.push(Port {
                container,
                host,
                host_ip,
                protocol,
            });
        }
    }
    out
}

/// Kernel parameters a container may set: those of its own network, IPC and
/// UTS namespaces (runc's and Docker's rule); anything else would change the host.
/// The runtime checks it again before writing one.
pub fn namespaced_sysctl(name: &str) -> bool {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.domainname",
    ];
    name.starts_with("net.") || name.starts_with("fs.mqueue.") || IPC.contains(&name)
}

/// A sysctl name: 1-128 bytes, dot-separated non-empty parts of ASCII
/// letters, digits, `_` and `-` (so it maps to a path under `/proc/sys`
/// without `/`, `.` or `..` components).
pub fn well_formed_sysctl(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        })
}

fn validate_sysctls(
    ctx: &mut FileCtx<'_>,
    s: &Spanned<BTreeMap<Spanned<String>, Spanned<WireScalar>>>,
    key: &str,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in s.get_ref() {
        let n = name.get_ref();
        let k = format!("{key}.{n}");
        if !well_formed_sysctl(n) {
            ctx.at(name.span(), k, format!("`{n}` is not a sysctl name"));
            continue;
        }
        if !namespaced_sysctl(n) {
            ctx.at(
                name.span(),
                k,
                format!("`{n}` is not namespaced (it would change the host); allowed: net.*, fs.mqueue.*, kernel.msg*/sem/shm*, kernel.domainname"),
            );
            continue;
        }
        let text = match value.get_ref() {
            WireScalar::Text(t) => t.clone(),
            WireScalar::Int(i) => i.to_string(),
        };
        if text.is_empty() || text.len() > 256 || text.contains(['\0', '\n']) {
            ctx.at(
                value.span(),
                k,
                "value must be 1-256 bytes with no newline or NUL",
            );
            continue;
        }
        out.insert(n.clone(), text);
    }
    out
}

/// `cap_add` / `cap_drop`: each name a Linux capability (any case, `CAP_`
/// prefix optional, as Docker's `NormalizeLegacyCapabilities`) or `ALL`;
/// normalized to [`CAPABILITIES`]' spelling, sorted, duplicates removed.
fn validate_caps(
    ctx: &mut FileCtx<'_>,
    list: &Spanned<Vec<Spanned<String>>>,
    key: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for name in list.get_ref() {
        let upper = name.get_ref().trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if bare == ALL_CAPABILITIES || CAPABILITIES.contains(&bare) {
            out.push(bare.to_string());
            continue;
        }
        let hint = super::lenient::did_you_mean(bare, CAPABILITIES)
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default();
        ctx.at(
            name.span(),
            key,
            format!(
                "`{}` is not a Linux capability{hint}; write e.g. `NET_ADMIN`, or `ALL`",
                name.get_ref()
            ),
        );
    }
    out.sort();
    out.dedup();
    out
}

/// `seccomp`: `"default"`, `"unconfined"`, or the absolute path of a JSON profile.
fn validate_seccomp(ctx: &mut FileCtx<'_>, s: &Spanned<String>, key: &str) -> SeccompProfile {
    let text = s.get_ref();
    if let Some(p) = SeccompProfile::parse(text) {
        if let SeccompProfile::File(path) = &p {
            if let Err(msg) = check_abs_path(path) {
                ctx.at(s.span(), key, msg);
            }
        }
        return p;
    }
    let hint = super::lenient::did_you_mean(text, &["default", "unconfined"])
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default();
    ctx.at(
        s.span(),
        key,
        format!("`{text}` is not \"default\", \"unconfined\" or the absolute path of a JSON profile{hint}"),
    );
    SeccompProfile::Default
}

/// `userns`: `"auto"` or `"host"`.
fn validate_userns(ctx: &mut FileCtx<'_>, s: &Spanned<String>, key: &str) -> UsernsMode {
    let text = s.get_ref();
    if let Some(m) = UsernsMode::parse(text) {
        return m;
    }
    let hint = super::lenient::did_you_mean(text, &["auto", "host"])
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default();
    ctx.at(
        s.span(),
        key,
        format!("`{text}` is not \"auto\" or \"host\"{hint}"),
    );
    UsernsMode::Auto
}

/// How a volume is named in messages: `volume `pgdata``, `host path `/srv``.
fn volume_label(v: &Volume) -> String {
    match &v.source {
        VolumeSource::Named(n) => format!("volume `{n}`"),
        VolumeSource::Host(h) => format!("host path `{h}`"),
        VolumeSource::Tmpfs { .. } => format!("tmpfs at `{}`", v.target),
    }
}

fn validate_resources(ctx: &mut FileCtx<'_>, r: &WireResources, key: &str) -> Resources {
    let mut out = Resources::default();
    if let Some(m) = &r.memory {
        match parse_size(m.get_ref()) {
            Ok(bytes) if (MIN_MEMORY..=(1u64 << 42)).contains(&bytes) => {
                out.memory_bytes = Some(bytes)
            }
            Ok(_) => ctx.at(
                m.span(),
                format!("{key}.memory"),
                "must be between 6Mi and 4Ti",
            ),
            Err(e) => ctx.at(m.span(), format!("{key}.memory"), e.to_string()),
        }
    }
    if let Some(c) = &r.cpus {
        let cpus = *c.get_ref();
        if cpus.is_finite() && (0.001..=1024.0).contains(&cpus) {
            out.millicpus = Some((cpus * 1000.0).round() as u32);
        } else {
            ctx.at(
                c.span(),
                format!("{key}.cpus"),
                "must be between 0.001 and 1024",
            );
        }
    }
    if let Some(p) = &r.pids {
        match u32::try_from(*p.get_ref()) {
            Ok(n) if (1..=4_194_304).contains(&n) => out.pids = Some(n),
            _ => ctx.at(
                p.span(),
                format!("{key}.pids"),
                "must be between 1 and 4194304",
            ),
        }
    }
    out
}

fn validate_health(ctx: &mut FileCtx<'_>, h: &Spanned<WireHealth>, key: &str) -> Option<Health> {
    let w = h.get_ref();
    let before = ctx.problems.len();
    let kinds = [w.http.is_some(), w.tcp.is_some(), w.exec.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if kinds != 1 {
        ctx.at(
            h.span(),
            key,
            format!("exactly one of `http`, `tcp`, `exec` is required ({kinds} given)"),
        );
    }
    let mut check = None;
    if let Some(http) = &w.http {
        let port = port_number(ctx, &http.get_ref().port, &format!("{key}.http.port"));
        let path = match &http.get_ref().path {
            None => "/".to_string(),
            Some(p)
                if p.get_ref().starts_with('/')
                    && p.get_ref().len() <= 2048
                    && !p
                        .get_ref()
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control()) =>
            {
                p.get_ref().clone()
            }
            Some(p) => {
                ctx.at(
                    p.span(),
                    format!("{key}.http.path"),
                    "must start with `/` and hold no spaces or control characters",
                );
                String::new()
            }
        };
        check = port.map(|port| HealthCheck::Http { port, path });
    }
    if let Some(tcp) = &w.tcp {
        check = port_number(ctx, &tcp.get_ref().port, &format!("{key}.tcp.port"))
            .map(|port| HealthCheck::Tcp { port });
    }
    if let Some(exec) = &w.exec {
        check = check_argv(ctx, exec, &format!("{key}.exec"))
            .map(|command| HealthCheck::Exec { command });
    }
    let interval = duration_or(
        ctx,
        w.interval.as_ref(),
        &format!("{key}.interval"),
        defaults::HEALTH_INTERVAL,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    let timeout = duration_or(
        ctx,
        w.timeout.as_ref(),
        &format!("{key}.timeout"),
        defaults::HEALTH_TIMEOUT,
        Duration::from_millis(10),
        Duration::from_secs(600),
    );
    let start_period = duration_or(
        ctx,
        w.start_period.as_ref(),
        &format!("{key}.start_period"),
        Duration::ZERO,
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    let retries = match &w.retries {
        None => defaults::HEALTH_RETRIES,
        Some(r) => match u32::try_from(*r.get_ref()) {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                ctx.at(
                    r.span(),
                    format!("{key}.retries"),
                    "must be between 1 and 100",
                );
                1
            }
        },
    };
    let on_unhealthy = match &w.on_unhealthy {
        None => OnUnhealthy::Restart,
        Some(v) => match v.get_ref().as_str() {
            "restart" => OnUnhealthy::Restart,
            "ignore" => OnUnhealthy::Ignore,
            other => {
                ctx.at(
                    v.span(),
                    format!("{key}.on_unhealthy"),
                    format!("`{other}` is not one of \"restart\", \"ignore\""),
                );
                OnUnhealthy::Restart
            }
        },
    };
    if ctx.problems.len() > before {
        return None;
    }
    Some(Health {
        check: check?,
        interval,
        timeout,
        retries,
        start_period,
        on_unhealthy,
    })
}

/// `[update]`; `single_writer` is the service's first single-writer volume,
/// which makes `stop-first` the default strategy.
fn validate_update(
    ctx: &mut FileCtx<'_>,
    u: Option<&Spanned<WireUpdate>>,
    key: &str,
    single_writer: Option<&Volume>,
) -> Update {
    let mut out = Update {
        strategy: if single_writer.is_some() {
            UpdateStrategy::StopFirst
        } else {
            UpdateStrategy::StartFirst
        },
        max_surge: 1,
        max_unavailable: 0,
        rollback_on_failure: true,
        drain: defaults::DRAIN,
        probation: defaults::PROBATION,
    };
    let Some(u) = u else { return out };
    let w = u.get_ref();
    if let Some(s) = &w.strategy {
        match s.get_ref().as_str() {
            "start-first" => out.strategy = UpdateStrategy::StartFirst,
            "stop-first" => out.strategy = UpdateStrategy::StopFirst,
            other => ctx.at(
                s.span(),
                format!("{key}.strategy"),
                format!("`{other}` is not one of \"start-first\", \"stop-first\""),
            ),
        }
    }
    let mut count = |v: &Option<Spanned<i64>>, field: &str, default: u32| match v {
        None => default,
        Some(n) => match u32::try_from(*n.get_ref()) {
            Ok(x) if x <= MAX_REPLICAS => x,
            _ => {
                ctx.at(
                    n.span(),
                    format!("{key}.{field}"),
                    format!("must be between 0 and {MAX_REPLICAS}"),
                );
                default
            }
        },
    };
    out.max_surge = count(&w.max_surge, "max_surge", 1);
    out.max_unavailable = count(&w.max_unavailable, "max_unavailable", 0);
    if out.max_surge == 0 && out.max_unavailable == 0 && out.strategy == UpdateStrategy::StartFirst
    {
        ctx.at(
            u.span(),
            key,
            "max_surge and max_unavailable cannot both be 0: a rollout could never progress",
        );
    }
    if let Some(r) = w.rollback_on_failure {
        out.rollback_on_failure = r;
    }
    out.drain = duration_or(
        ctx,
        w.drain.as_ref(),
        &format!("{key}.drain"),
        defaults::DRAIN,
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    out.probation = duration_or(
        ctx,
        w.probation.as_ref(),
        &format!("{key}.probation"),
        defaults::PROBATION,
        Duration::ZERO,
        Duration::from_secs(24 * 3600),
    );
    out
}

fn validate_restart(ctx: &mut FileCtx<'_>, r: Option<&WireRestart>, key: &str) -> Restart {
    let mut out = Restart {
        policy: RestartPolicy::Always,
        backoff_initial: defaults::BACKOFF_INITIAL,
        backoff_max: defaults::BACKOFF_MAX,
    };
    let Some(r) = r else { return out };
    if let Some(p) = &r.policy {
        match p.get_ref().as_str() {
            "always" => out.policy = RestartPolicy::Always,
            "on-failure" => out.policy = RestartPolicy::OnFailure,
            "never" => out.policy = RestartPolicy::Never,
            other => ctx.at(
                p.span(),
                format!("{key}.policy"),
                format!("`{other}` is not one of \"always\", \"on-failure\", \"never\""),
            ),
        }
    }
    if let Some(b) = &r.backoff {
        let w = b.get_ref();
        out.backoff_initial = duration_or(
            ctx,
            w.initial.as_ref(),
            &format!("{key}.backoff.initial"),
            defaults::BACKOFF_INITIAL,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        );
        out.backoff_max = duration_or(
            ctx,
            w.max.as_ref(),
            &format!("{key}.backoff.max"),
            defaults::BACKOFF_MAX,
            Duration::from_millis(1),
            Duration::from_secs(24 * 3600),
        );
        if out.backoff_initial > out.backoff_max {
            ctx.at(
                b.span(),
                format!("{key}.backoff"),
                "initial must not be longer than max",
            );
        }
    }
    out
}

fn validate_mounts(
    ctx: &mut FileCtx<'_>,
    volumes: Option<&Spanned<Vec<Spanned<WireVolume>>>>,
    secrets: Option<&Spanned<Vec<Spanned<WireSecret>>>>,
    svc: &str,
) -> (Vec<Volume>, Vec<Secret>) {
    let mut targets: BTreeSet<String> = BTreeSet::new();
    let mut out_vols = Vec::new();
    let mut out_secrets = Vec::new();
    if let Some(vols) = volumes {
        if vols.get_ref().len() > MAX_MOUNTS {
            ctx.at(
                vols.span(),
                format!("service.{svc}.volumes"),
                format!("more than {MAX_MOUNTS} volumes"),
            );
        }
        for (i, v) in vols.get_ref().iter().enumerate() {
            let key = format!("service.{svc}.volumes[{i}]");
            let w = v.get_ref();
            let kinds = [w.name.is_some(), w.host.is_some(), w.tmpfs.is_some()]
                .iter()
                .filter(|x| **x)
                .count();
            if kinds != 1 {
                ctx.at(
                    v.span(),
                    &key,
                    format!("exactly one of `name`, `host`, `tmpfs` is required ({kinds} given)"),
                );
                continue;
            }
            let target = w.target.get_ref();
            if let Err(msg) = check_abs_path(target) {
                ctx.at(w.target.span(), format!("{key}.target"), msg);
                continue;
            }
            if target == "/" {
                ctx.at(
                    w.target.span(),
                    format!("{key}.target"),
                    "cannot mount over `/`",
                );
                continue;
            }
            let norm = normalize_target(target);
            if !targets.insert(norm.clone()) {
                ctx.at(
                    w.target.span(),
                    format!("{key}.target"),
                    format!("`{norm}` is mounted twice"),
                );
                continue;
            }
            let source = if let Some(n) = &w.name {
                if !valid_volume_name(n.get_ref()) {
                    ctx.at(n.span(), format!("{key}.name"), format!("`{}` is not a valid volume name (1-64 of [A-Za-z0-9_.-], starting with a letter or digit)", n.get_ref()));
                    continue;
                }
                VolumeSource::Named(n.get_ref().clone())
            } else if let Some(h) = &w.host {
                if let Err(msg) = check_abs_path(h.get_ref()) {
                    ctx.at(h.span(), format!("{key}.host"), msg);
                    continue;
                }
                VolumeSource::Host(h.get_ref().clone())
            } else if let Some(t) = &w.tmpfs {
                match parse_size(t.get_ref()) {
                    Ok(size) if size > 0 && size <= 1 << 40 => {
                        VolumeSource::Tmpfs { size_bytes: size }
                    }
                    Ok(_) => {
                        ctx.at(
                            t.span(),
                            format!("{key}.tmpfs"),
                            "size must be between 1 byte and 1Ti",
                        );
                        continue;
                    }
                    Err(e) => {
                        ctx.at(t.span(), format!("{key}.tmpfs"), e.to_string());
                        continue;
                    }
                }
            } else {
                continue;
            };
            out_vols.push(Volume {
                source,
                target: norm,
                readonly: w.readonly.unwrap_or(false),
                shared: w.shared.unwrap_or(false),
            });
        }
    }
    if let Some(secs) = secrets {
        if secs.get_ref().len() > MAX_MOUNTS {
            ctx.at(
                secs.span(),
                format!("service.{svc}.secrets"),
                format!("more than {MAX_MOUNTS} secrets"),
            );
        }
        for (i, s) in secs.get_ref().iter().enumerate() {
            let key = format!("service.{svc}.secrets[{i}]");
            let w = s.get_ref();
            if let Err(msg) = check_abs_path(w.source.get_ref()) {
                ctx.at(w.source.span(), format!("{key}.source"), msg);
                continue;
            }
            let t = w.target.get_ref();
            let ok = !t.is_empty()
                && t.len() <= 64
                && t != "."
                && t != ".."
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                ctx.at(
                    w.target.span(),
                    format!("{key}.target"),
                    "must be a file name of 1-64 of [A-Za-z0-9_.-]",
                );
                continue;
            }
            let full = format!("/run/secrets/{t}");
            if !targets.insert(full.clone()) {
                ctx.at(
                    w.target.span(),
                    format!("{key}.target"),
                    format!("`{full}` is mounted twice"),
                );
                continue;
            }
            out_secrets.push(Secret {
                source: w.source.get_ref().clone(),
                target: t.clone(),
            });
        }
    }
    (out_vols, out_secrets)
}

/// `/data//x/` → `/data/x`
fn normalize_target(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// Parses an env file (`KEY=VALUE` lines, `#` comments, blank lines) into pairs,
/// refusing a bad line with its number.
pub fn parse_env_file(file: &str, text: &str) -> Result<Vec<(String, String)>, Problem> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let bad = |message: &str| Problem {
            file: file.to_string(),
            line: i + 1,
            column: 1,
            key: String::new(),
            message: message.to_string(),
        };
        let (key, value) = trimmed
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        let key = key.trim_end();
        // Docker's env-file parser also refuses whitespace in a name.
        if !valid_env_name(key) || key.contains(char::is_whitespace) {
            return Err(bad(&format!("`{key}` is not a valid variable name")));
        }
        if out.len() >= MAX_ENV {
            return Err(bad(&format!("more than {MAX_ENV} variables")));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
