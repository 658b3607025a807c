//! Reading a manifest file as far as it goes, so one run reports every
//! mistake: syntax errors (recovered where the parser can), unknown keys (each
//! with a "did you mean" from the schema's own names, by `strsim`), and type
//! errors (the offending key is set aside and the service read again), before
//! the semantic rules of `validate` run on what could be read.

use std::ops::Range;

use toml::de::{DeTable, DeValue, Deserializer};
use toml::Spanned;

use super::wire::{WireFleet, WireService};

/// The keys a table may hold, by dotted path (`*` = any service name, `[]` =
/// every entry of an array of tables). `None` for free-form maps (env, sysctls).
fn allowed(path: &str) -> Option<&'static [&'static str]> {
    Some(match path {
        "" => &["service", "fleet"],
        "fleet" => &["max_parallel", "groups", "bake", "auto_revert"],
        "service.*" => &[
            "image",
            "replicas",
            "entrypoint",
            "command",
            "env",
            "env_file",
            "workdir",
            "user",
            "readonly_rootfs",
            "stop_signal",
            "stop_timeout",
            "sysctls",
            "depends_on",
            "init",
            "cap_add",
            "cap_drop",
            "seccomp",
            "userns",
            "resources",
            "port",
            "ports",
            "health",
            "update",
            "restart",
            "volumes",
            "secrets",
            "pull",
        ],
        "service.*.resources" => &["memory", "cpus", "pids"],
        "service.*.port" => &["container", "host"],
        "service.*.ports[]" => &["container", "host", "host_ip", "protocol"],
        "service.*.health" => &[
            "http",
            "tcp",
            "exec",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "on_unhealthy",
        ],
        "service.*.health.http" => &["port", "path"],
        "service.*.health.tcp" => &["port"],
        "service.*.update" => &[
            "strategy",
            "max_surge",
            "max_unavailable",
            "rollback_on_failure",
            "drain",
            "probation",
        ],
        "service.*.restart" => &["policy", "backoff"],
        "service.*.restart.backoff" => &["initial", "max"],
        "service.*.volumes[]" => &["name", "host", "tmpfs", "target", "readonly", "shared"],
        "service.*.secrets[]" => &["source", "target"],
        "service.*.pull" => &["policy", "check"],
        _ => return None,
    })
}

/// The closest allowed name to a misspelled one, if any is close enough.
pub(crate) fn did_you_mean<'a>(wrong: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| {
            (
                c,
                strsim::jaro_winkler(wrong, c),
                strsim::levenshtein(wrong, c),
            )
        })
        .filter(|(_, jw, lev)| *jw >= 0.85 || *lev <= 2)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _, _)| *c)
}

/// A file read as far as it goes: its services (with spans into the text) and
/// the problems met on the way, unlocated by file (the caller adds it).
pub(super) struct Read {
    pub services: Vec<(Spanned<String>, WireService)>,
    /// The `[fleet]` table, with the span of its header's value.
    pub fleet: Option<(Range<usize>, WireFleet)>,
    /// (span, dotted key, message)
    pub problems: Vec<(Range<usize>, String, String)>,
}

/// Reads `text` leniently (see the module doc).
pub(super) fn read(text: &str) -> Read {
    let mut out = Read {
        services: Vec::new(),
        fleet: None,
        problems: Vec::new(),
    };
    let (root, errors) = DeTable::parse_recoverable(text);
    for e in &errors {
        let span = e.span().unwrap_or(0..0);
        out.problems.push((
            span.clone(),
            super::validate::key_at(text, &span),
            e.message().trim().to_string(),
        ));
    }
    if !errors.is_empty() {
        // What follows a syntax error is guesswork; report only the syntax.
        return out;
    }
    let mut root = root.into_inner();
    prune_unknown(&mut root, "", "", &mut out.problems);
    if let Some(fleet) = root.get("fleet") {
        let span = fleet.span();
        if let DeValue::Table(t) = fleet.get_ref() {
            let de = Deserializer::from(Spanned::new(span.clone(), t.clone()));
            match serde::Deserialize::deserialize(de) {
                Ok(w) => out.fleet = Some((span, w)),
                Err(e) => out.problems.push((
                    e.span().unwrap_or(span),
                    "fleet".into(),
                    plain_types(e.message().trim()),
                )),
            }
        } else {
            out.problems.push((
                span,
                "fleet".into(),
                "`fleet` must be a table ([fleet])".into(),
            ));
        }
    }
    let Some(services) = root.get_mut("service") else {
        return out;
    };
    let services_span = services.span();
    let DeValue::Table(services) = services.get_mut() else {
        out.problems.push((
            services_span,
            "service".into(),
            "`service` must be a table of services ([service.NAME])".into(),
        ));
        return out;
    };
    for (name, value) in std::mem::take(services) {
        let key = format!("service.{}", name.get_ref());
        let span = value.span();
        let DeValue::Table(mut table) = value.into_inner() else {
            out.problems.push((
                span,
                key.clone(),
                format!("`{key}` must be a table ([{key}])"),
            ));
            continue;
        };
        // Set aside one key per type error, then read the rest again.
        let mut set_aside = Vec::new();
        let wire = loop {
            let de = Deserializer::from(Spanned::new(span.clone(), table.clone()));
            match serde::Deserialize::deserialize(de) {
                Ok(w) => break Some::<WireService>(w),
                Err(e) => {
                    let at = e.span().unwrap_or(span.clone());
                    let culprit = table
                        .iter()
                        .find(|(k, v)| contains(&v.span(), &at) || contains(&k.span(), &at))
                        .map(|(k, _)| k.get_ref().to_string());
                    let field = culprit
                        .clone()
                        .map(|c| format!("{key}.{c}"))
                        .unwrap_or_else(|| key.clone());
                    out.problems
                        .push((at, field, plain_types(e.message().trim())));
                    match culprit {
                        Some(c) if set_aside.len() < 64 => {
                            retain(&mut table, |k, _| k != c.as_str());
                            set_aside.push(c);
                        }
                        _ => break None,
                    }
                }
            }
        };
        if let Some(wire) = wire {
            // A required key set aside for its type is not also "missing".
            let wire = if set_aside.iter().any(|k| k == "image") {
                WireService {
                    image: Some(Spanned::new(0..0, String::new())),
                    ..wire
                }
            } else {
                wire
            };
            out.services
                .push((Spanned::new(name.span(), name.get_ref().to_string()), wire));
        }
    }
    out
}

/// Keeps the entries whose key passes `keep` (the map's own `retain` needs
/// plain string keys; these carry spans).
fn retain(table: &mut DeTable<'_>, mut keep: impl FnMut(&str, Range<usize>) -> bool) {
    for (k, v) in std::mem::take(table) {
        if keep(k.get_ref(), k.span()) {
            table.insert(k, v);
        }
    }
}

/// serde's Rust type names in a type error, as a manifest author says them
/// (`expected i64` → `expected an integer`).
fn plain_types(message: &str) -> String {
    [
        ("expected i64", "expected an integer"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ]
    .iter()
    .fold(message.to_string(), |m, (rust, plain)| {
        m.replace(rust, plain)
    })
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

/// Removes (and reports) keys the schema does not know, recursively.
fn prune_unknown(
    table: &mut DeTable<'_>,
    pattern: &str,
    dotted: &str,
    problems: &mut Vec<(Range<usize>, String, String)>,
) {
    let Some(names) = allowed(pattern) else {
        return;
    };
    retain(table, |name, span| {
        if names.contains(&name) {
            return true;
        }
        let full = join(dotted, name);
        let hint = did_you_mean(name, names)
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_else(|| format!(" (expected one of: {})", names.join(", ")));
        problems.push((span, full, format!("unknown key `{name}`{hint}")));
        false
    });
    for (k, v) in table.iter_mut() {
        let name = k.get_ref().to_string();
        let child_pattern = join(pattern, &name);
        let child_dotted = join(dotted, &name);
        match v.get_mut() {
            DeValue::Table(t) => prune_unknown(t, &child_pattern, &child_dotted, problems),
            DeValue::Array(items) => {
                let item_pattern = format!("{child_pattern}[]");
                for (i, item) in items.iter_mut().enumerate() {
                    if let DeValue::Table(t) = item.get_mut() {
                        prune_unknown(t, &item_pattern, &format!("{child_dotted}[{i}]"), problems);
                    }
                }
            }
            _ => {}
        }
    }
    // `service` itself holds names, not schema keys.
    if pattern.is_empty() {
        if let Some(services) = table.get_mut("service") {
            if let DeValue::Table(t) = services.get_mut() {
                for (name, v) in t.iter_mut() {
                    if let DeValue::Table(st) = v.get_mut() {
                        let dotted = format!("service.{}", name.get_ref());
                        prune_unknown(st, "service.*", &dotted, problems);
                    }
                }
            }
        }
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}
