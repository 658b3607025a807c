//! The key-by-key mapping from a Compose service to a Berth service, and the
//! TOML writer. Each Compose key is either mapped (`handle_*`), noted as a
//! difference, or named as unsupported with what to do instead ([`ADVICE`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use docker_compose_types as dc;
use serde_yaml::{Mapping, Value};

use super::{ComposeError, Note, NoteKind, Positions};

/// What every mapping step shares: where the file is, its positions, the
/// notes so far and the interpolation variables (for `- KEY` environment entries).
pub(super) struct Ctx {
    pub file: String,
    pub dir: PathBuf,
    pub positions: Positions,
    pub notes: Vec<Note>,
    pub env: BTreeMap<String, String>,
}

impl Ctx {
    pub fn note(&mut self, key: &str, kind: NoteKind, message: impl Into<String>) {
        let (line, column) = self.positions.at(key);
        self.notes.push(Note {
            file: self.file.clone(),
            line,
            column,
            key: key.to_string(),
            kind,
            message: message.into(),
        });
    }

    fn shape(&self, key: &str, message: impl Into<String>) -> ComposeError {
        let (line, column) = self.positions.at(key);
        ComposeError::Shape {
            file: self.file.clone(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// `p` against the Compose file's directory (`~` is the home directory).
    fn host_path(&self, p: &str) -> String {
        let path = if let Some(rest) = p.strip_prefix("~/") {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(rest)
        } else {
            self.dir.join(p)
        };
        normalize(&path).display().to_string()
    }
}

/// `path` with `.` and `..` resolved lexically (the file need not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Compose service keys Berth has no equivalent for, with what to do instead.
const ADVICE: &[(&str, &str)] = &[
    ("build", "Berth runs images from a registry: build and push the image (docker build, skopeo), then set `image`"),
    ("network_mode", "every Berth service is on the agent's bridge with its own network namespace; publish ports instead of sharing the host's network"),
    ("privileged", "Berth never runs privileged containers: add the capabilities it needs with cap_add"),
    ("devices", "Berth's devices cgroup allows no host device; run it outside Berth"),
    ("pid", "containers never share a PID namespace in Berth"),
    ("ipc", "containers never share an IPC namespace in Berth"),
    ("extends", "write the service out in full (merge the base service into it)"),
    ("volumes_from", "mount the same named volume in both services instead"),
    ("external_links", "reach the other container by an address or a published port"),
    ("extra_hosts", "Berth's resolver answers service names; other names come from the upstream DNS"),
    ("dns", "containers use Berth's resolver; set upstreams with berthd --dns-upstream"),
    ("dns_search", "containers use Berth's resolver; names are service names or NAME.berth.internal"),
    ("dns_opt", "containers use Berth's resolver"),
    ("ulimits", "Berth keeps the agent's resource limits; use [resources] for memory, cpus and pids"),
    ("cgroup_parent", "berthd places every container under --cgroup-parent"),
    ("runtime", "Berth is the runtime"),
    ("group_add", "add the groups in the image's /etc/group or set user = \"UID:GID\""),
    ("shm_size", "/dev/shm is a 64 MiB tmpfs; mount a tmpfs volume at /dev/shm for more"),
    ("tty", "use `berthctl exec -it` for an interactive shell"),
    ("stdin_open", "use `berthctl exec -i` to talk to a process"),
    ("hostname", "a Berth container's hostname is its container id; other services reach it by its service name"),
    ("domainname", "not set by Berth"),
    ("mac_address", "addresses come from Berth's IPAM"),
    ("mem_reservation", "Berth sets limits only ([resources] memory)"),
    ("mem_swappiness", "swap is off for Berth containers"),
    ("memswap_limit", "swap is off for Berth containers"),
    ("oom_kill_disable", "an OOM kill is reported and the replica restarted"),
    ("oom_score_adj", "not set by Berth"),
    ("cpu_shares", "use [resources] cpus (a hard limit)"),
    ("cpu_quota", "use [resources] cpus"),
    ("cpu_period", "use [resources] cpus"),
    ("cpuset", "not set by Berth"),
    ("cpu_count", "use [resources] cpus"),
    ("cpu_percent", "use [resources] cpus"),
    ("blkio_config", "not set by Berth"),
    ("storage_opt", "not set by Berth"),
    ("isolation", "not set by Berth"),
    ("platform", "Berth pulls the image for the host's platform"),
    ("configs", "mount the file with a read-only host volume (`host = ...`, `readonly = true`) or a secret"),
    ("userns_mode", "only \"host\" has an equivalent (userns = \"host\")"),
    ("annotations", "Berth keeps no annotations"),
    ("attach", "logs are always kept (berthctl logs)"),
    ("develop", "Berth has no watch mode"),
    ("credential_spec", "Windows only"),
    ("gpus", "Berth's devices cgroup allows no host device"),
    ("device_cgroup_rules", "Berth's devices cgroup allows no host device"),
    ("models", "not supported by Berth"),
    ("provider", "not supported by Berth"),
    ("post_start", "run the step in the entrypoint"),
    ("pre_stop", "handle the stop signal in the process"),
    ("use_api_socket", "Berth gives containers no engine socket"),
    ("label_file", "Berth keeps no container labels"),
    ("links", "every service reaches every other by its service name in Berth; links are not needed"),
];

/// Keys whose interpolated value Compose casts to a number or a boolean.
pub(super) const TYPED_KEYS: &[&str] = &[
    "replicas",
    "scale",
    "retries",
    "read_only",
    "init",
    "privileged",
    "tty",
    "stdin_open",
    "disable",
    "cpus",
    "pids_limit",
    "pids",
    "parallelism",
    "max_attempts",
    "published",
    "target",
    "size",
    "external",
    "required",
    "restart",
    "max_failure_ratio",
    "nocopy",
];

/// Keys the mapping reads.
const MAPPED: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "tmpfs",
    "depends_on",
    "healthcheck",
    "restart",
    "deploy",
    "scale",
    "stop_signal",
    "stop_grace_period",
    "user",
    "working_dir",
    "read_only",
    "cap_add",
    "cap_drop",
    "secrets",
    "init",
    "labels",
    "sysctls",
    "security_opt",
    "pull_policy",
    "mem_limit",
    "cpus",
    "pids_limit",
    "profiles",
    "container_name",
    "logging",
    "userns_mode",
    "networks",
];

/// A Compose name as a Berth service name: lower case, `_` and `.` as `-`
/// (Berth's names are DNS labels of [a-z0-9-]).
pub(super) fn service_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' | '-' => c,
            _ => '-',
        })
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "service".into()
    } else {
        s
    }
}

/// A mapping key as text (numbers and booleans as written).
pub(super) fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML key: bare when it can be, quoted otherwise.
fn k(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        s.to_string()
    } else {
        q(s)
    }
}

fn arr(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", v.join(", "))
}

/// One Berth service being written: plain keys first, then its tables.
#[derive(Default)]
struct Out {
    lines: Vec<String>,
    tables: Vec<String>,
}

impl Out {
    fn comment(&mut self, text: &str) {
        for l in text.lines() {
            self.lines.push(format!("# {l}"));
        }
    }
    fn set(&mut self, key: &str, value: String) {
        self.lines.push(format!("{} = {value}", k(key)));
    }
    fn table(&mut self, text: String) {
        self.tables.push(text);
    }
}

/// Converts every active service of `doc`; returns the manifest text and the
/// Berth names of the services written.
pub(super) fn convert(
    ctx: &mut Ctx,
    doc: &Value,
    profiles: &[String],
) -> Result<(String, Vec<String>), ComposeError> {
    let Some(top) = doc.as_mapping() else {
        return Err(ctx.shape("", "the top level must be a mapping with `services:`"));
    };
    for (key, v) in top {
        let key = key_text(key);
        match key.as_str() {
            "services" | "volumes" | "secrets" | "name" => {}
            "version" => ctx.note(
                "version",
                NoteKind::Changed,
                "obsolete in the Compose Specification; ignored",
            ),
            "networks" => {
                if v.as_mapping().is_some_and(|m| !m.is_empty()) {
                    ctx.note("networks", NoteKind::Changed, "Berth puts every service of an agent on one bridge where every service name resolves; the networks are not created");
                }
            }
            "configs" => ctx.note(
                "configs",
                NoteKind::Unsupported,
                "mount each file with a read-only host volume or a secret instead",
            ),
            "include" => ctx.note(
                "include",
                NoteKind::Unsupported,
                "convert each included file on its own (berthctl convert FILE) and put the manifests in one directory",
            ),
            k if k.starts_with("x-") => {}
            other => ctx.note(
                other,
                NoteKind::Unsupported,
                "not a Compose Specification top-level key",
            ),
        }
    }
    let volumes_top = top
        .get("volumes")
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    check_top_volumes(ctx, &volumes_top);
    let secrets_top = top
        .get("secrets")
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    let Some(services) = top.get("services").and_then(Value::as_mapping) else {
        return Err(ctx.shape("", "no `services:` mapping"));
    };
    // Which services are active, and their Berth names.
    let mut active: BTreeMap<String, String> = BTreeMap::new();
    let mut order = Vec::new();
    for (name, raw) in services {
        let name = key_text(name);
        let theirs: Vec<String> = raw
            .get("profiles")
            .and_then(Value::as_sequence)
            .map(|s| {
                s.iter()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if !theirs.is_empty() && !theirs.iter().any(|p| profiles.contains(p)) {
            continue;
        }
        let mut berth = service_name(&name);
        if active.values().any(|b| *b == berth) {
            let base = berth.clone();
            let mut n = 2;
            while active.values().any(|b| *b == berth) {
                berth = format!("{base}-{n}");
                n += 1;
            }
        }
        if berth != name {
            ctx.note(
                &format!("services.{name}"),
                NoteKind::Changed,
                format!("service `{name}` is `{berth}` in Berth (service names are DNS labels of [a-z0-9-]); other services reach it as `{berth}`"),
            );
        }
        active.insert(name.clone(), berth);
        order.push(name);
    }
    let mut text = String::from(
        "# A Berth manifest converted from a Compose file by `berthctl convert`.\n# Check the notes it printed; `berthctl validate -f FILE` checks it again.\n",
    );
    let mut written = Vec::new();
    for name in &order {
        let raw = services.get(name).cloned().unwrap_or(Value::Null);
        let Some(out) = convert_service(ctx, name, &raw, &active, &volumes_top, &secrets_top)?
        else {
            continue;
        };
        let berth = &active[name];
        text.push_str(&format!("\n[service.{}]\n", k(berth)));
        for l in &out.lines {
            text.push_str(l);
            text.push('\n');
        }
        for t in &out.tables {
            text.push('\n');
            text.push_str(t);
        }
        written.push(berth.clone());
    }
    Ok((text, written))
}

fn check_top_volumes(ctx: &mut Ctx, volumes: &Mapping) {
    for (name, v) in volumes {
        let name = key_text(name);
        let Some(m) = v.as_mapping() else { continue };
        for (key, _) in m {
            let key = key_text(key);
            let path = format!("volumes.{name}.{key}");
            match key.as_str() {
                "name" | "labels" => {}
                "external" => ctx.note(&path, NoteKind::Changed, format!("Berth keeps named volumes under its state dir: volume `{name}` starts empty (seeded from the image) rather than using existing data; copy the data into /var/lib/berth/volumes/{name}/_data first")),
                "driver" | "driver_opts" => ctx.note(&path, NoteKind::Unsupported, "Berth's named volumes are local directories; use a host volume for other storage"),
                _ => ctx.note(&path, NoteKind::Unsupported, "not a volume key Berth reads"),
            }
        }
    }
}

/// The Berth name of the top-level volume `name` (its `name:` if set).
fn volume_name(volumes: &Mapping, name: &str) -> String {
    volumes
        .get(name)
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
        .unwrap_or(name)
        .to_string()
}

/// Brings the forms `docker-compose-types` cannot read into ones it can:
/// numbers where it wants strings, keys it does not know (read here first).
fn normalize_service(raw: &mut Value, optional: &mut Vec<String>) -> BTreeMap<&'static str, Value> {
    let mut taken = BTreeMap::new();
    let Some(m) = raw.as_mapping_mut() else {
        return taken;
    };
    let to_string = |v: &mut Value| {
        if let Value::Number(n) = v {
            *v = Value::String(n.to_string());
        }
    };
    // A single string where Compose also takes a list.
    for key in [
        "cap_add",
        "cap_drop",
        "security_opt",
        "expose",
        "env_file",
        "profiles",
    ] {
        if let Some(v @ Value::String(_)) = m.get_mut(key) {
            *v = Value::Sequence(vec![v.clone()]);
        }
    }
    if let Some(Value::Sequence(ports)) = m.get_mut("ports") {
        for p in ports.iter_mut() {
            to_string(p);
        }
        // Short and long forms in one list: the long ones written short.
        if ports.iter().any(Value::is_string) && ports.iter().any(Value::is_mapping) {
            for p in ports.iter_mut() {
                if let Some(lm) = p.as_mapping() {
                    let f = |k: &str| lm.get(k).map(value_text).filter(|s| !s.is_empty());
                    let mut short = String::new();
                    if let Some(ip) = f("host_ip") {
                        short.push_str(&if ip.contains(':') {
                            format!("[{ip}]:")
                        } else {
                            format!("{ip}:")
                        });
                    }
                    if let Some(p) = f("published") {
                        short.push_str(&format!("{p}:"));
                    } else if !short.is_empty() {
                        short.push(':');
                    }
                    short.push_str(&f("target").unwrap_or_default());
                    if let Some(proto) = f("protocol") {
                        short.push_str(&format!("/{proto}"));
                    }
                    *p = Value::String(short);
                }
            }
        }
    }
    if let Some(Value::Sequence(secrets)) = m.get_mut("secrets") {
        if secrets.iter().any(Value::is_string) && secrets.iter().any(Value::is_mapping) {
            for x in secrets.iter_mut() {
                if let Value::String(name) = x {
                    let mut lm = Mapping::new();
                    lm.insert("source".into(), Value::String(name.clone()));
                    *x = Value::Mapping(lm);
                }
            }
        }
    }
    if let Some(Value::Sequence(ex)) = m.get_mut("expose") {
        for p in ex.iter_mut() {
            to_string(p);
        }
    }
    for key in ["mem_limit", "stop_grace_period", "shm_size", "user"] {
        if let Some(v) = m.get_mut(key) {
            to_string(v);
        }
    }
    // env_file's long form: `- path: x, required: false`.
    if let Some(Value::Sequence(files)) = m.get_mut("env_file") {
        let mut keep = Vec::new();
        for f in files.drain(..) {
            match f.get("path").and_then(Value::as_str) {
                Some(p) => {
                    if f.get("required").and_then(Value::as_bool) == Some(false) {
                        optional.push(p.to_string());
                    }
                    keep.push(Value::String(p.to_string()))
                }
                None => keep.push(f),
            }
        }
        *files = keep;
    }
    // Not in the crate's service type: read here.
    for key in ["cpus", "pids_limit"] {
        if let Some(v) = m.remove(key) {
            taken.insert(key, v);
        }
    }
    if let Some(deploy) = m.get_mut("deploy").and_then(Value::as_mapping_mut) {
        for key in ["rollback_config", "endpoint_mode"] {
            if let Some(v) = deploy.remove(key) {
                taken.insert(
                    if key == "endpoint_mode" {
                        "deploy.endpoint_mode"
                    } else {
                        "deploy.rollback_config"
                    },
                    v,
                );
            }
        }
        if let Some(limits) = deploy
            .get_mut("resources")
            .and_then(|r| r.get_mut("limits"))
            .and_then(Value::as_mapping_mut)
        {
            if let Some(v) = limits.get_mut("cpus") {
                to_string(v);
            }
            if let Some(v) = limits.get_mut("memory") {
                to_string(v);
            }
            if let Some(v) = limits.remove("pids") {
                taken.insert("deploy.resources.limits.pids", v);
            }
        }
        if let Some(res) = deploy
            .get_mut("resources")
            .and_then(|r| r.get_mut("reservations"))
            .and_then(Value::as_mapping_mut)
        {
            for key in ["cpus", "memory"] {
                if let Some(v) = res.get_mut(key) {
                    to_string(v);
                }
            }
            res.remove("pids");
            res.remove("generic_resources");
        }
        if let Some(u) = deploy
            .get_mut("update_config")
            .and_then(Value::as_mapping_mut)
        {
            if let Some(v) = u.remove("order") {
                taken.insert("deploy.update_config.order", v);
            }
        }
    }
    if let Some(Value::Sequence(vols)) = m.get_mut("volumes") {
        for v in vols.iter_mut() {
            if let Some(t) = v.get_mut("tmpfs").and_then(Value::as_mapping_mut) {
                if let Some(size) = t.get("size").cloned() {
                    if let Some(s) = size.as_str() {
                        if let Some(bytes) = docker_bytes(s) {
                            t.insert("size".into(), Value::Number(bytes.into()));
                        }
                    }
                }
                t.remove("mode");
            }
        }
    }
    taken
}

/// A Docker size (`512m`, `1g`, `1gb`, `2048`, `1.5G`): binary units, as
/// Docker reads `--memory` and Compose `mem_limit`.
pub(super) fn docker_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let f: u64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    let bytes = n * f as f64;
    (bytes.is_finite() && (0.0..1e19).contains(&bytes)).then_some(bytes.round() as u64)
}

/// Bytes the way a Berth manifest writes a size.
fn berth_size(bytes: u64) -> String {
    for (unit, f) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= f && bytes.is_multiple_of(f) {
            return format!("{}{unit}", bytes / f);
        }
    }
    bytes.to_string()
}

/// A Compose duration checked against Berth's reader.
fn duration(ctx: &mut Ctx, key: &str, text: &str) -> Option<String> {
    match berth_core::units::parse_duration(text) {
        Ok(_) => Some(text.to_string()),
        Err(e) => {
            ctx.note(
                key,
                NoteKind::Unsupported,
                format!("duration `{text}`: {e}"),
            );
            None
        }
    }
}

/// Splits a Compose string command the way Compose does (shell words).
fn words(ctx: &mut Ctx, key: &str, s: &str) -> Option<Vec<String>> {
    match shlex::split(s) {
        Some(w) => Some(w),
        None => {
            ctx.note(
                key,
                NoteKind::Unsupported,
                "unbalanced quotes: write it as a list",
            );
            None
        }
    }
}

fn single_value(v: &dc::SingleValue) -> String {
    match v {
        dc::SingleValue::String(s) => s.clone(),
        dc::SingleValue::Bool(b) => b.to_string(),
        dc::SingleValue::Unsigned(n) => n.to_string(),
        dc::SingleValue::Signed(n) => n.to_string(),
        dc::SingleValue::Float(f) => f.to_string(),
    }
}

fn convert_service(
    ctx: &mut Ctx,
    name: &str,
    raw: &Value,
    active: &BTreeMap<String, String>,
    volumes_top: &Mapping,
    secrets_top: &Mapping,
) -> Result<Option<Out>, ComposeError> {
    let base = format!("services.{name}");
    let key = |k: &str| format!("{base}.{k}");
    let Some(m) = raw.as_mapping() else {
        return Err(ctx.shape(&base, "a service must be a mapping"));
    };
    for (k, _) in m {
        let k = key_text(k);
        if MAPPED.contains(&k.as_str()) || k.starts_with("x-") {
            continue;
        }
        let advice = ADVICE
            .iter()
            .find(|(a, _)| *a == k)
            .map(|(_, adv)| *adv)
            .unwrap_or("Berth has no equivalent");
        // `build` beside an `image` only loses the build step.
        if k == "build" && !m.contains_key("image") {
            continue;
        }
        if k == "build" {
            ctx.note(
                &key("build"),
                NoteKind::Changed,
                "ignored: Berth runs `image` from its registry (build and push it first)",
            );
            continue;
        }
        if k == "links" {
            ctx.note(&key(&k), NoteKind::Changed, advice);
            continue;
        }
        ctx.note(&key(&k), NoteKind::Unsupported, advice);
    }
    let mut norm = raw.clone();
    if let Some(nm) = norm.as_mapping_mut() {
        // Noted above; the typed parse reads only what is mapped.
        nm.retain(|k, _| MAPPED.contains(&key_text(k).as_str()));
    }
    let mut optional_env_files = Vec::new();
    let taken = normalize_service(&mut norm, &mut optional_env_files);
    let svc: dc::Service = serde_yaml::from_value(norm)
        .map_err(|e| ctx.shape(&base, format!("not a Compose service: {e}")))?;
    let mut out = Out::default();

    match &svc.image {
        Some(i) => out.set("image", q(i)),
        None => {
            ctx.note(&base, NoteKind::Unsupported, "no `image`: Berth runs images from a registry; build and push it, then set `image` (service left out)");
            return Ok(None);
        }
    }
    let scale = (svc.scale > 0).then_some(svc.scale);
    let replicas = svc.deploy.as_ref().and_then(|d| d.replicas).or(scale);
    if let Some(r) = replicas {
        out.set("replicas", r.to_string());
    }
    if let Some(e) = &svc.entrypoint {
        let v = match e {
            dc::Entrypoint::List(v) => Some(v.clone()),
            dc::Entrypoint::Simple(s) => words(ctx, &key("entrypoint"), s),
        };
        if let Some(v) = v {
            out.set("entrypoint", arr(&v));
        }
    }
    if let Some(c) = &svc.command {
        let v = match c {
            dc::Command::Args(v) => Some(v.clone()),
            dc::Command::Simple(s) => words(ctx, &key("command"), s),
        };
        if let Some(v) = v {
            out.set("command", arr(&v));
        }
    }
    if let Some(u) = &svc.user {
        out.set("user", q(u));
    }
    if let Some(w) = &svc.working_dir {
        out.set("workdir", q(w));
    }
    if svc.read_only {
        out.set("readonly_rootfs", "true".into());
    }
    if svc.init {
        out.set("init", "true".into());
    }
    if let Some(s) = &svc.stop_signal {
        out.set("stop_signal", q(s));
    }
    if let Some(g) = &svc.stop_grace_period {
        if let Some(d) = duration(ctx, &key("stop_grace_period"), g) {
            out.set("stop_timeout", q(&d));
        }
    }
    if !svc.cap_add.is_empty() {
        out.set("cap_add", arr(&svc.cap_add));
    }
    if !svc.cap_drop.is_empty() {
        out.set("cap_drop", arr(&svc.cap_drop));
    }
    for (i, opt) in svc.security_opt.iter().enumerate() {
        let k2 = key(&format!("security_opt.{i}"));
        let (name, value) = opt.split_once(['=', ':']).unwrap_or((opt.as_str(), ""));
        match name {
            "seccomp" => {
                let value = if value == "unconfined" || value == "default" {
                    value.to_string()
                } else {
                    ctx.host_path(value)
                };
                out.set("seccomp", q(&value));
            }
            "no-new-privileges" => ctx.note(&k2, NoteKind::Changed, "always on in Berth"),
            _ => ctx.note(
                &k2,
                NoteKind::Unsupported,
                "Berth reads only seccomp= here (no AppArmor/SELinux labels)",
            ),
        }
    }
    if let Some(mode) = m.get("userns_mode").and_then(Value::as_str) {
        if mode == "host" {
            out.set("userns", q("host"));
        } else {
            ctx.note(&key("userns_mode"), NoteKind::Unsupported, "only \"host\" has an equivalent (userns = \"host\"); Berth's default is an own user namespace per service");
        }
    }
    // Labels and logging: kept out with a note.
    if !svc.labels.is_empty() {
        ctx.note(
            &key("labels"),
            NoteKind::Changed,
            "Berth keeps no container labels; dropped",
        );
    }
    if svc.logging.is_some() {
        ctx.note(&key("logging"), NoteKind::Changed, "Berth keeps each container's stdout/stderr in its own rotated files (berthctl logs); the driver is not used");
    }
    if svc.container_name.is_some() {
        ctx.note(
            &key("container_name"),
            NoteKind::Changed,
            "Berth names containers itself (SERVICE-ID); the service name is the DNS name",
        );
    }
    if !svc.networks.is_empty() {
        let aliases = match &svc.networks {
            dc::Networks::Advanced(a) => a.0.values().any(|v| {
                matches!(v, dc::MapOrEmpty::Map(s) if !s.aliases.is_empty() || s.ipv4_address.is_some() || s.ipv6_address.is_some())
            }),
            dc::Networks::Simple(_) => false,
        };
        ctx.note(
            &key("networks"),
            if aliases { NoteKind::Unsupported } else { NoteKind::Changed },
            if aliases {
                "aliases and fixed addresses are not supported: every service is reachable by its service name on the agent's one bridge"
            } else {
                "every Berth service is on the agent's one bridge and reaches every other by its service name"
            },
        );
    }
    // Environment: env_file first, then `environment` (which wins).
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    if let Some(files) = &svc.env_file {
        let list = match files {
            dc::StringOrList::Simple(s) => vec![s.clone()],
            dc::StringOrList::List(v) => v.clone(),
        };
        let mut paths = Vec::new();
        for p in &list {
            let abs = ctx.host_path(p);
            if optional_env_files.contains(p) && !Path::new(&abs).is_file() {
                ctx.note(
                    &key("env_file"),
                    NoteKind::Changed,
                    format!("{abs} does not exist and is `required: false`: left out"),
                );
                continue;
            }
            paths.push(abs);
        }
        if paths.is_empty() {
        } else if paths.len() == 1 {
            out.set("env_file", q(&paths[0]));
        } else {
            for p in &paths {
                match std::fs::read_to_string(p) {
                    Ok(t) => env.extend(super::parse_dotenv(&t)),
                    Err(e) => {
                        ctx.note(&key("env_file"), NoteKind::Unsupported, format!("{p}: {e}"))
                    }
                }
            }
            ctx.note(&key("env_file"), NoteKind::Changed, format!("Berth reads one env_file: the {} files were read now and their variables written into `env`", paths.len()));
        }
    }
    match &svc.environment {
        dc::Environment::List(items) => {
            for (i, item) in items.iter().enumerate() {
                match item.split_once('=') {
                    Some((k2, v)) => {
                        env.insert(k2.to_string(), v.to_string());
                    }
                    None => match ctx.env.get(item).cloned() {
                        Some(v) => {
                            env.insert(item.clone(), v);
                        }
                        None => ctx.note(&key(&format!("environment.{i}")), NoteKind::Changed, format!("`{item}` has no value here and is not set in the environment: left out (as Compose does)")),
                    },
                }
            }
        }
        dc::Environment::KvPair(map) => {
            for (k2, v) in map {
                match v {
                    Some(v) => {
                        env.insert(k2.clone(), single_value(v));
                    }
                    None => match ctx.env.get(k2).cloned() {
                        Some(v) => {
                            env.insert(k2.clone(), v);
                        }
                        None => ctx.note(&key(&format!("environment.{k2}")), NoteKind::Changed, format!("`{k2}` has no value here and is not set in the environment: left out (as Compose does)")),
                    },
                }
            }
        }
    }
    if !svc.sysctls.is_empty() {
        let mut t = format!("[service.{}.sysctls]\n", k(&active[name]));
        let pairs: Vec<(String, String)> = match &svc.sysctls {
            dc::SysCtls::List(v) => v
                .iter()
                .filter_map(|s| {
                    s.split_once('=')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                })
                .collect(),
            dc::SysCtls::Map(m) => m
                .iter()
                .map(|(a, b)| (a.clone(), b.as_ref().map(single_value).unwrap_or_default()))
                .collect(),
        };
        for (a, b) in pairs {
            t.push_str(&format!("{} = {}\n", k(&a), q(&b)));
        }
        out.table(t);
    }
    // Depends_on.
    let mut deps = Vec::new();
    let dep_list: Vec<(String, Option<String>)> = match &svc.depends_on {
        dc::DependsOnOptions::Simple(v) => v.iter().map(|d| (d.clone(), None)).collect(),
        dc::DependsOnOptions::Conditional(m) => m
            .iter()
            .map(|(d, c)| (d.clone(), Some(c.condition.clone())))
            .collect(),
    };
    for (d, cond) in dep_list {
        let k2 = key(&format!("depends_on.{d}"));
        if cond.as_deref() == Some("service_completed_successfully") {
            ctx.note(&k2, NoteKind::Unsupported, "Berth runs long-lived services: it waits for a ready replica, not a completed job; run the job before applying");
            continue;
        }
        match active.get(&d) {
            Some(b) => deps.push(b.clone()),
            None => ctx.note(
                &k2,
                NoteKind::Changed,
                format!(
                    "`{d}` is not converted (not defined, or its profile is not active): dropped"
                ),
            ),
        }
    }
    if !deps.is_empty() {
        out.comment("depends_on: starts once each of these has a ready replica (healthy, where it has a health check)");
        out.set("depends_on", arr(&deps));
    }
    if let Some(p) = &svc.pull_policy {
        match p {
            dc::PullPolicy::Always => out.table(format!(
                "[service.{}.pull]\npolicy = \"always\"\n",
                k(&active[name])
            )),
            dc::PullPolicy::Missing => {}
            dc::PullPolicy::Never => out.table(format!(
                "[service.{}.pull]\npolicy = \"never\"\n",
                k(&active[name])
            )),
            dc::PullPolicy::Build => ctx.note(
                &key("pull_policy"),
                NoteKind::Unsupported,
                "Berth builds nothing: build and push (or `berthctl load`) the image",
            ),
        }
    }

    // Resources.
    let mut res: Vec<String> = Vec::new();
    let limits = svc
        .deploy
        .as_ref()
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.limits.clone());
    let memory = limits
        .as_ref()
        .and_then(|l| l.memory.clone())
        .or(svc.mem_limit.clone());
    if let Some(mem) = memory {
        match docker_bytes(&mem) {
            Some(b) => res.push(format!("memory = {}", q(&berth_size(b)))),
            None => ctx.note(
                &key("deploy.resources.limits.memory"),
                NoteKind::Unsupported,
                format!("size `{mem}` is not a Docker size"),
            ),
        }
    }
    let cpus = limits
        .as_ref()
        .and_then(|l| l.cpus.clone())
        .or_else(|| taken.get("cpus").map(value_text));
    if let Some(c) = cpus {
        match c.parse::<f64>() {
            Ok(f) if f > 0.0 => res.push(format!("cpus = {f}")),
            _ => ctx.note(
                &key("deploy.resources.limits.cpus"),
                NoteKind::Unsupported,
                format!("`{c}` is not a number of CPUs"),
            ),
        }
    }
    let pids = taken
        .get("deploy.resources.limits.pids")
        .or(taken.get("pids_limit"))
        .map(value_text);
    if let Some(p) = pids {
        match p.parse::<i64>() {
            Ok(n) if n > 0 => res.push(format!("pids = {n}")),
            _ => ctx.note(
                &key("pids_limit"),
                NoteKind::Unsupported,
                format!("`{p}`: Berth needs a positive pids limit"),
            ),
        }
    }
    if limits.as_ref().is_some_and(|l| l.devices.is_some()) {
        ctx.note(
            &key("deploy.resources.limits.devices"),
            NoteKind::Unsupported,
            "Berth's devices cgroup allows no host device",
        );
    }
    if svc
        .deploy
        .as_ref()
        .and_then(|d| d.resources.as_ref())
        .is_some_and(|r| r.reservations.is_some())
    {
        ctx.note(
            &key("deploy.resources.reservations"),
            NoteKind::Changed,
            "Berth sets limits only; reservations are dropped",
        );
    }
    if !res.is_empty() {
        out.table(format!(
            "[service.{}.resources]\n{}\n",
            k(&active[name]),
            res.join("\n")
        ));
    }

    // Ports.
    let mut ports: Vec<PortOut> = Vec::new();
    match &svc.ports {
        dc::Ports::Short(list) => {
            for (i, p) in list.iter().enumerate() {
                let k2 = key(&format!("ports.{i}"));
                match parse_short_port(p) {
                    Ok((mut v, random)) => {
                        for p in &mut v {
                            p.at = k2.clone();
                        }
                        if random {
                            ctx.note(&k2, NoteKind::Changed, "Compose publishes it on a random host port; Berth publishes fixed host ports only: kept as a port other services reach by name (add a host port to publish it)");
                        }
                        ports.append(&mut v);
                    }
                    Err(e) => ctx.note(&k2, NoteKind::Unsupported, e),
                }
            }
        }
        dc::Ports::Long(list) => {
            for (i, p) in list.iter().enumerate() {
                let k2 = key(&format!("ports.{i}"));
                let host = match &p.published {
                    None => None,
                    Some(dc::PublishedPort::Single(n)) => Some(*n),
                    Some(dc::PublishedPort::Range(r)) => {
                        match r.parse::<u16>() {
                            Ok(n) => Some(n),
                            Err(_) => {
                                match parse_range(r) {
                                    Some((a, _)) => {
                                        ctx.note(&k2, NoteKind::Changed, format!("Compose picks a free port of {r}; Berth publishes {a}"));
                                        Some(a)
                                    }
                                    None => {
                                        ctx.note(
                                            &k2,
                                            NoteKind::Unsupported,
                                            format!("`{r}` is not a port"),
                                        );
                                        continue;
                                    }
                                }
                            }
                        }
                    }
                };
                if host.is_none() {
                    ctx.note(&k2, NoteKind::Changed, "Compose publishes it on a random host port; Berth publishes fixed host ports only: kept as a port other services reach by name");
                }
                ports.push(PortOut {
                    at: k2.clone(),
                    container: p.target,
                    host,
                    host_ip: p.host_ip.clone(),
                    protocol: p.protocol.clone().unwrap_or_else(|| "tcp".into()),
                });
            }
        }
    }
    for (i, e) in svc.expose.iter().enumerate() {
        let (num, proto) = e.split_once('/').unwrap_or((e.as_str(), "tcp"));
        let range = parse_range(num).or_else(|| num.parse().ok().map(|n| (n, n)));
        match range {
            Some((a, b)) => {
                for c in a..=b {
                    if !ports
                        .iter()
                        .any(|p| p.container == c && p.protocol == proto)
                    {
                        ports.push(PortOut {
                            at: key(&format!("expose.{i}")),
                            container: c,
                            host: None,
                            host_ip: None,
                            protocol: proto.into(),
                        });
                    }
                }
            }
            None => ctx.note(
                &key(&format!("expose.{i}")),
                NoteKind::Unsupported,
                format!("`{e}` is not a port"),
            ),
        }
    }
    ports.retain(|p| {
        let v6 = p.host_ip.as_deref().is_some_and(|ip| ip.contains(':'));
        if v6 {
            ctx.note(
                &p.at,
                NoteKind::Unsupported,
                format!(
                    "port {}: Berth publishes on IPv4 addresses only (host_ip {})",
                    p.container,
                    p.host_ip.as_deref().unwrap_or("")
                ),
            );
        }
        !v6
    });
    for p in &ports {
        let mut t = format!(
            "[[service.{}.ports]]\ncontainer = {}\n",
            k(&active[name]),
            p.container
        );
        if let Some(h) = p.host {
            t.push_str(&format!("host = {h}\n"));
        }
        if let Some(ip) = &p.host_ip {
            t.push_str(&format!("host_ip = {}\n", q(ip)));
        }
        if p.protocol != "tcp" {
            t.push_str(&format!("protocol = {}\n", q(&p.protocol)));
        }
        out.table(t);
    }

    // Volumes, tmpfs and secrets.
    let mut writers = Vec::new();
    for (i, v) in svc.volumes.iter().enumerate() {
        let k2 = key(&format!("volumes.{i}"));
        let vol = match v {
            dc::Volumes::Simple(s) => parse_short_volume(ctx, &k2, name, i, s, volumes_top),
            dc::Volumes::Advanced(a) => long_volume(ctx, &k2, name, i, a, volumes_top),
        };
        let Some(vol) = vol else { continue };
        if !vol.readonly && !matches!(vol.kind, VolKind::Tmpfs(_)) {
            writers.push(vol.describe());
        }
        out.table(vol.toml(&active[name]));
    }
    if let Some(t) = &svc.tmpfs {
        let list = match t {
            dc::Tmpfs::Simple(s) => vec![s.clone()],
            dc::Tmpfs::List(v) => v.clone(),
        };
        for (i, entry) in list.iter().enumerate() {
            let (target, opts) = entry.split_once(':').unwrap_or((entry.as_str(), ""));
            let size = opts
                .split(',')
                .find_map(|o| o.strip_prefix("size="))
                .and_then(docker_bytes);
            if size.is_none() {
                ctx.note(&key(&format!("tmpfs.{i}")), NoteKind::Changed, format!("Berth's tmpfs needs a size: 64Mi for {target} (Docker's default is half the host's memory)"));
            }
            let vol = Vol {
                kind: VolKind::Tmpfs(size.unwrap_or(64 << 20)),
                target: target.into(),
                readonly: false,
            };
            out.table(vol.toml(&active[name]));
        }
    }
    if let Some(secrets) = &svc.secrets {
        let list: Vec<(String, Option<String>)> = match secrets {
            dc::Secrets::Simple(v) => v.iter().map(|s| (s.clone(), None)).collect(),
            dc::Secrets::Advanced(v) => v
                .iter()
                .map(|s| (s.source.clone(), s.target.clone()))
                .collect(),
        };
        for (i, (source, target)) in list.into_iter().enumerate() {
            let k2 = key(&format!("secrets.{i}"));
            let def = secrets_top.get(source.as_str());
            let file = def.and_then(|d| d.get("file")).and_then(Value::as_str);
            let Some(file) = file else {
                let why = if def.and_then(|d| d.get("environment")).is_some() {
                    "a secret from an environment variable: write it to a file and use `file:`"
                } else if def.and_then(|d| d.get("external")).is_some() {
                    "an external secret: put it in a file on the host and use `file:`"
                } else {
                    "no top-level `secrets.<name>.file` for it"
                };
                ctx.note(&k2, NoteKind::Unsupported, why);
                continue;
            };
            let mut target = target.unwrap_or_else(|| source.clone());
            if let Some(t) = target.strip_prefix("/run/secrets/") {
                target = t.to_string();
            } else if target.starts_with('/') {
                let base = target.rsplit('/').next().unwrap_or("").to_string();
                ctx.note(&k2, NoteKind::Changed, format!("Berth mounts secrets at /run/secrets/<name>: {target} is /run/secrets/{base}"));
                target = base;
            }
            out.table(format!(
                "[[service.{}.secrets]]\nsource = {}\ntarget = {}\n",
                k(&active[name]),
                q(&ctx.host_path(file)),
                q(&target)
            ));
        }
    }

    // Health check.
    if let Some(h) = &svc.healthcheck {
        let test = match &h.test {
            Some(dc::HealthcheckTest::Single(s)) => {
                Some(vec!["/bin/sh".into(), "-c".into(), s.clone()])
            }
            Some(dc::HealthcheckTest::Multiple(v)) => match v.first().map(String::as_str) {
                Some("CMD") => Some(v[1..].to_vec()),
                Some("CMD-SHELL") => Some(vec!["/bin/sh".into(), "-c".into(), v[1..].join(" ")]),
                Some("NONE") => None,
                _ => {
                    ctx.note(
                        &key("healthcheck.test"),
                        NoteKind::Unsupported,
                        "a test list starts with CMD, CMD-SHELL or NONE",
                    );
                    None
                }
            },
            None => None,
        };
        if h.disable || test.is_none() {
            ctx.note(
                &key("healthcheck"),
                NoteKind::Unsupported,
                "Berth cannot switch off an image's HEALTHCHECK: without a check here it uses the image's, if it has one (write a check that always passes, e.g. exec = [\"true\"], for Compose's behaviour)",
            );
        } else if let Some(test) = test {
            let mut t = format!(
                "[service.{}.health]\nexec = {}\n",
                k(&active[name]),
                arr(&test)
            );
            let interval = h.interval.clone().unwrap_or_else(|| "30s".into());
            let timeout = h.timeout.clone().unwrap_or_else(|| "30s".into());
            if let Some(d) = duration(ctx, &key("healthcheck.interval"), &interval) {
                t.push_str(&format!("interval = {}\n", q(&d)));
            }
            if let Some(d) = duration(ctx, &key("healthcheck.timeout"), &timeout) {
                t.push_str(&format!("timeout = {}\n", q(&d)));
            }
            t.push_str(&format!(
                "retries = {}\n",
                if h.retries > 0 { h.retries } else { 3 }
            ));
            if let Some(sp) = &h.start_period {
                if let Some(d) = duration(ctx, &key("healthcheck.start_period"), sp) {
                    t.push_str(&format!("start_period = {}\n", q(&d)));
                }
            }
            if h.start_interval.is_some() {
                ctx.note(
                    &key("healthcheck.start_interval"),
                    NoteKind::Changed,
                    "Berth checks at `interval` from the start",
                );
            }
            out.table(t);
        }
    }

    // Restart: deploy.restart_policy, else `restart`, else Compose's default "no".
    let restart = svc
        .deploy
        .as_ref()
        .and_then(|d| d.restart_policy.as_ref())
        .map(|r| match r.condition.as_deref() {
            Some("none") => ("never", "deploy.restart_policy"),
            Some("on-failure") => ("on-failure", "deploy.restart_policy"),
            _ => ("always", "deploy.restart_policy"),
        })
        .or_else(|| {
            svc.restart
                .as_deref()
                .map(|r| match r.split(':').next().unwrap_or("") {
                    "no" => ("never", "restart"),
                    "on-failure" => ("on-failure", "restart"),
                    "always" => ("always", "restart"),
                    "unless-stopped" => ("always", "restart-unless-stopped"),
                    _ => ("", "restart"),
                })
        });
    match restart {
        Some(("", _)) => ctx.note(&key("restart"), NoteKind::Unsupported, "not one of no, always, on-failure, unless-stopped"),
        Some((policy, from)) => {
            let from = if from == "restart-unless-stopped" {
                ctx.note(&key("restart"), NoteKind::Changed, "unless-stopped is `always` in Berth: a replica stopped by hand is replaced (stop a service by removing it from the manifest)");
                "restart"
            } else {
                from
            };
            if svc.restart.as_deref().is_some_and(|r| r.starts_with("on-failure:"))
                || svc.deploy.as_ref().and_then(|d| d.restart_policy.as_ref()).is_some_and(|r| r.max_attempts.is_some() || r.delay.is_some() || r.window.is_some())
            {
                ctx.note(&key(from), NoteKind::Changed, "Berth restarts with exponential backoff and no attempt limit ([restart] backoff)");
            }
            out.table(format!("[service.{}.restart]\npolicy = {}\n", k(&active[name]), q(policy)));
        }
        None => out.table(format!(
            "[service.{}.restart]\n# Compose's default (no `restart:`): a container that exits stays exited.\npolicy = \"never\"\n",
            k(&active[name])
        )),
    }

    // Update: deploy.update_config.
    let mut upd: Vec<String> = Vec::new();
    let order = taken.get("deploy.update_config.order").map(value_text);
    if let Some(o) = &order {
        match o.as_str() {
            "start-first" | "stop-first" => upd.push(format!("strategy = {}", q(o))),
            _ => ctx.note(
                &key("deploy.update_config.order"),
                NoteKind::Unsupported,
                "not start-first or stop-first",
            ),
        }
    }
    if let Some(u) = svc.deploy.as_ref().and_then(|d| d.update_config.as_ref()) {
        if let Some(p) = u.parallelism.filter(|p| *p > 0) {
            if order.as_deref() == Some("start-first") {
                upd.push(format!("max_surge = {p}"));
            } else {
                upd.push(format!("max_unavailable = {p}"));
            }
        }
        match u.failure_action.as_deref() {
            Some("rollback") => upd.push("rollback_on_failure = true".into()),
            Some("pause") | Some("continue") => {
                upd.push("rollback_on_failure = false".into());
                ctx.note(&key("deploy.update_config.failure_action"), NoteKind::Changed, "a failed Berth rollout stops and keeps what runs (rollback_on_failure = false)");
            }
            _ => {}
        }
        if let Some(mon) = &u.monitor {
            if let Some(d) = duration(ctx, &key("deploy.update_config.monitor"), mon) {
                upd.push(format!("probation = {}", q(&d)));
            }
        }
        if u.delay.is_some() || u.max_failure_ratio.is_some() {
            ctx.note(&key("deploy.update_config"), NoteKind::Changed, "delay and max_failure_ratio have no Berth equivalent: a batch starts when the previous one is ready");
        }
    }
    if !writers.is_empty() && order.is_none() {
        out.comment(&format!(
            "updates stop-first: {} has one writer at a time (Berth's default for a writable volume; Compose also stops the old container first)",
            writers.join(", ")
        ));
    }
    if !upd.is_empty() {
        out.table(format!(
            "[service.{}.update]\n{}\n",
            k(&active[name]),
            upd.join("\n")
        ));
    }
    if let Some(d) = &svc.deploy {
        if d.mode.as_deref() == Some("global") {
            ctx.note(
                &key("deploy.mode"),
                NoteKind::Changed,
                "Berth runs per host: `global` is one replica on this host",
            );
        }
        if d.placement.is_some() {
            ctx.note(&key("deploy.placement"), NoteKind::Unsupported, "Berth runs on the host whose agent applies the manifest; pick hosts by what they apply (docs/fleet.md)");
        }
        if !d.labels.is_empty() {
            ctx.note(
                &key("deploy.labels"),
                NoteKind::Changed,
                "Berth keeps no labels; dropped",
            );
        }
    }
    for t in ["deploy.rollback_config", "deploy.endpoint_mode"] {
        if taken.contains_key(t) {
            ctx.note(&key(t), NoteKind::Unsupported, "Berth rolls back to the previous revision's spec (berthctl rollback); no separate config");
        }
    }

    // Environment last among the plain keys (it can be long): a table.
    if !env.is_empty() {
        let mut t = format!("[service.{}.env]\n", k(&active[name]));
        for (a, b) in &env {
            t.push_str(&format!("{} = {}\n", k(a), q(b)));
        }
        out.tables.insert(0, t);
    }
    Ok(Some(out))
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PortOut {
    /// Where it is written (`ports.N` or `expose.N`).
    at: String,
    container: u16,
    host: Option<u16>,
    host_ip: Option<String>,
    protocol: String,
}

fn parse_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
    (a <= b).then_some((a, b))
}

/// A short port (`[IP:][HOST[-HOST]:]CONTAINER[-CONTAINER][/PROTO]`, IPv6 in
/// brackets); the bool says a host port was left to chance.
fn parse_short_port(s: &str) -> Result<(Vec<PortOut>, bool), String> {
    let (body, proto) = match s.rsplit_once('/') {
        Some((b, p)) => (b, p.to_string()),
        None => (s, "tcp".to_string()),
    };
    if proto != "tcp" && proto != "udp" {
        return Err(format!("protocol `{proto}`: Berth publishes tcp and udp"));
    }
    let (ip, rest) = if let Some(r) = body.strip_prefix('[') {
        let (ip, after) = r.split_once(']').ok_or_else(|| format!("`{s}`: no `]`"))?;
        (
            Some(ip.to_string()),
            after.strip_prefix(':').unwrap_or(after).to_string(),
        )
    } else {
        let parts: Vec<&str> = body.split(':').collect();
        match parts.len() {
            1 | 2 => (None, body.to_string()),
            3 => (
                Some(parts[0].to_string()),
                format!("{}:{}", parts[1], parts[2]),
            ),
            _ => return Err(format!("`{s}` is not a port")),
        }
    };
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None => (None, rest.as_str()),
    };
    let bad = || format!("`{s}` is not a port");
    let crange = parse_range(container)
        .or_else(|| container.parse().ok().map(|n| (n, n)))
        .ok_or_else(bad)?;
    let hrange = match host {
        None | Some("") => None,
        Some(h) => Some(
            parse_range(h)
                .or_else(|| h.parse().ok().map(|n| (n, n)))
                .ok_or_else(bad)?,
        ),
    };
    let n = crange.1 - crange.0;
    let mut out = Vec::new();
    for i in 0..=n {
        let host = match hrange {
            None => None,
            Some((a, b)) if b - a == n => Some(a + i),
            Some((a, _)) => Some(a + i),
        };
        out.push(PortOut {
            at: String::new(),
            container: crange.0 + i,
            host,
            host_ip: ip.clone().filter(|ip| !ip.is_empty()),
            protocol: proto.clone(),
        });
    }
    Ok((out, hrange.is_none()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum VolKind {
    Named(String),
    Host(String),
    Tmpfs(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Vol {
    kind: VolKind,
    target: String,
    readonly: bool,
}

impl Vol {
    fn toml(&self, service: &str) -> String {
        let mut t = format!("[[service.{}.volumes]]\n", k(service));
        match &self.kind {
            VolKind::Named(n) => t.push_str(&format!("name = {}\n", q(n))),
            VolKind::Host(h) => t.push_str(&format!("host = {}\n", q(h))),
            VolKind::Tmpfs(size) => t.push_str(&format!("tmpfs = {}\n", q(&berth_size(*size)))),
        }
        t.push_str(&format!("target = {}\n", q(&self.target)));
        if self.readonly {
            t.push_str("readonly = true\n");
        }
        t
    }

    fn describe(&self) -> String {
        match &self.kind {
            VolKind::Named(n) => format!("volume `{n}` at {}", self.target),
            VolKind::Host(h) => format!("{h} at {}", self.target),
            VolKind::Tmpfs(_) => format!("tmpfs at {}", self.target),
        }
    }
}

fn is_path(src: &str) -> bool {
    src.starts_with('/') || src.starts_with('.') || src.starts_with('~')
}

/// An anonymous volume's Berth name: kept across replacements like a named one.
fn anonymous_name(service: &str, target: &str) -> String {
    let t: String = target
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{}_{}", service_name(service), t.trim_matches('_'))
}

fn parse_short_volume(
    ctx: &mut Ctx,
    key: &str,
    service: &str,
    _i: usize,
    s: &str,
    volumes_top: &Mapping,
) -> Option<Vol> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, target, mode) = match parts.as_slice() {
        [t] => (None, *t, ""),
        [a, b] => (Some(*a), *b, ""),
        [a, b, m] => (Some(*a), *b, *m),
        _ => {
            ctx.note(
                key,
                NoteKind::Unsupported,
                format!("`{s}` is not SOURCE:TARGET[:MODE]"),
            );
            return None;
        }
    };
    let modes: Vec<&str> = mode.split(',').filter(|m| !m.is_empty()).collect();
    for m in &modes {
        match *m {
            "ro" | "rw" | "cached" | "delegated" | "consistent" => {}
            "z" | "Z" => ctx.note(key, NoteKind::Changed, "SELinux relabelling (:z/:Z) is not done by Berth"),
            "nocopy" => ctx.note(key, NoteKind::Changed, "Berth seeds a new named volume from the image once, like Docker; nocopy is not supported"),
            other => ctx.note(key, NoteKind::Unsupported, format!("mode `{other}`")),
        }
    }
    let readonly = modes.contains(&"ro");
    let kind = match src {
        None => {
            let n = anonymous_name(service, target);
            ctx.note(key, NoteKind::Changed, format!("an anonymous volume: Berth keeps it as the named volume `{n}` across replacements"));
            VolKind::Named(n)
        }
        Some(src) if is_path(src) => VolKind::Host(ctx.host_path(src)),
        Some(src) => {
            if !volumes_top.contains_key(src) {
                ctx.note(key, NoteKind::Changed, format!("volume `{src}` is not declared under top-level `volumes:` (Compose refuses that); converted as a named volume"));
            }
            VolKind::Named(volume_name(volumes_top, src))
        }
    };
    Some(Vol {
        kind,
        target: target.to_string(),
        readonly,
    })
}

fn long_volume(
    ctx: &mut Ctx,
    key: &str,
    service: &str,
    _i: usize,
    a: &dc::AdvancedVolumes,
    volumes_top: &Mapping,
) -> Option<Vol> {
    let kind = match a._type.as_str() {
        "volume" => match &a.source {
            Some(s) => VolKind::Named(volume_name(volumes_top, s)),
            None => {
                let n = anonymous_name(service, &a.target);
                ctx.note(key, NoteKind::Changed, format!("an anonymous volume: Berth keeps it as the named volume `{n}` across replacements"));
                VolKind::Named(n)
            }
        },
        "bind" => match &a.source {
            Some(s) => VolKind::Host(ctx.host_path(s)),
            None => {
                ctx.note(key, NoteKind::Unsupported, "a bind needs a source");
                return None;
            }
        },
        "tmpfs" => {
            let size = a.tmpfs.as_ref().map(|t| t.size).filter(|s| *s > 0);
            if size.is_none() {
                ctx.note(key, NoteKind::Changed, format!("Berth's tmpfs needs a size: 64Mi for {} (Docker's default is half the host's memory)", a.target));
            }
            VolKind::Tmpfs(size.unwrap_or(64 << 20))
        }
        other => {
            ctx.note(
                key,
                NoteKind::Unsupported,
                format!("volume type `{other}`: Berth has volume, bind and tmpfs"),
            );
            return None;
        }
    };
    if a.volume
        .as_ref()
        .is_some_and(|v| v.nocopy == Some(true) || v.subpath.is_some())
    {
        ctx.note(key, NoteKind::Changed, "nocopy and subpath are not supported: the whole volume is mounted, seeded from the image once");
    }
    if a.bind
        .as_ref()
        .is_some_and(|b| b.propagation.is_some() || b.selinux.is_some())
    {
        ctx.note(
            key,
            NoteKind::Changed,
            "bind propagation and SELinux options are not supported (binds are private)",
        );
    }
    Some(Vol {
        kind,
        target: a.target.clone(),
        readonly: a.read_only,
    })
}

/// [`normalize`], for the fixture tests' expected paths.
#[cfg(test)]
pub(super) fn tests_normalize(p: &Path) -> String {
    normalize(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_short_port_form() {
        let p = |s: &str| parse_short_port(s).unwrap();
        let one = |c, h: Option<u16>, ip: Option<&str>, proto: &str| PortOut {
            at: String::new(),
            container: c,
            host: h,
            host_ip: ip.map(String::from),
            protocol: proto.into(),
        };
        assert_eq!(p("3000"), (vec![one(3000, None, None, "tcp")], true));
        assert_eq!(
            p("8000:80"),
            (vec![one(80, Some(8000), None, "tcp")], false)
        );
        assert_eq!(
            p("127.0.0.1:8001:8001"),
            (vec![one(8001, Some(8001), Some("127.0.0.1"), "tcp")], false)
        );
        assert_eq!(
            p("6060:6060/udp"),
            (vec![one(6060, Some(6060), None, "udp")], false)
        );
        assert_eq!(
            p("[::1]:6001:6001"),
            (vec![one(6001, Some(6001), Some("::1"), "tcp")], false)
        );
        assert_eq!(
            p("127.0.0.1::5000"),
            (vec![one(5000, None, Some("127.0.0.1"), "tcp")], true)
        );
        assert_eq!(
            p("9090-9091:8080-8081").0,
            vec![
                one(8080, Some(9090), None, "tcp"),
                one(8081, Some(9091), None, "tcp")
            ]
        );
        assert_eq!(p("3000-3001").0.len(), 2);
        assert!(parse_short_port("80/sctp").is_err());
        assert!(parse_short_port("a:b").is_err());
    }

    #[test]
    fn docker_sizes_are_binary() {
        assert_eq!(docker_bytes("512m"), Some(512 << 20));
        assert_eq!(docker_bytes("1g"), Some(1 << 30));
        assert_eq!(docker_bytes("1gb"), Some(1 << 30));
        assert_eq!(docker_bytes("1.5G"), Some(3 << 29));
        assert_eq!(docker_bytes("2048"), Some(2048));
        assert_eq!(docker_bytes("64MiB"), Some(64 << 20));
        assert_eq!(docker_bytes("lots"), None);
        assert_eq!(berth_size(512 << 20), "512Mi");
        assert_eq!(berth_size(1 << 30), "1Gi");
        assert_eq!(berth_size(1000), "1000");
    }

    #[test]
    fn names_become_dns_labels() {
        assert_eq!(service_name("web"), "web");
        assert_eq!(service_name("My_DB.v2"), "my-db-v2");
        assert_eq!(service_name("__"), "service");
    }
}
