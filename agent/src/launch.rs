//! What a container runs: the image config (Entrypoint/Cmd/Env/WorkingDir/
//! User/StopSignal/Healthcheck/ExposedPorts/Volumes, parsed from the
//! config JSON) merged with the manifest's overrides by Docker's rules, and
//! `user` resolved against the image's own `/etc/passwd` and `/etc/group`, read
//! safely from its layer snapshots (top-most first, never following a link
//! out of a layer). See docs/images.md for each field beside Docker's rule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_core::manifest::Signal;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// The parts of an OCI image config that decide how a container runs, as
/// stored in the image record. Every field has a default, so records written
/// by an older berthd (without the later fields) still read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ImageRunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `StopSignal` as written in the image (`SIGINT`, `2`, `SIGRTMIN+3`).
    pub stop_signal: Option<String>,
    /// `Healthcheck` as written in the image (0 durations = Docker's defaults).
    pub healthcheck: Option<ImageHealthcheck>,
    /// `ExposedPorts`, normalized to `port/proto` (`80/tcp`), sorted by port.
    pub exposed_ports: Vec<String>,
    /// `Volumes`: container paths the image declares as volumes, sorted.
    pub volumes: Vec<String>,
}

/// An image's `Healthcheck`, as Docker's config JSON holds it (durations
/// there are integer nanoseconds; 0 or absent means Docker's default).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ImageHealthcheck {
    /// `[]` (inherit: none), `["NONE"]`, `["CMD", arg…]` or `["CMD-SHELL", cmd]`.
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

/// The resolved process of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `KEY=VALUE`, sorted by key.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, sorted; the primary `gid` is one of them (as Docker).
    pub additional_gids: Vec<u32>,
}

/// Why a process could not be built, or an image config not read.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("nothing to run: the image has no Entrypoint or Cmd and the manifest sets no command")]
    NoCommand,
    #[error("unable to find user {user}: no matching entries in the image's /etc/passwd")]
    UnknownUser { user: String },
    #[error("unable to find group {group}: no matching entries in the image's /etc/group")]
    UnknownGroup { group: String },
    #[error("user `{user}`: uids and gids must be in range 0-{max}", max = MAX_ID)]
    OutOfRange { user: String },
    #[error("image config: {0}")]
    BadConfig(String),
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Largest passwd/group file read from an image.
const MAX_DB_BYTES: u64 = 1 << 20;
/// Largest uid/gid Docker accepts (`moby/sys/user`'s `maxID`).
const MAX_ID: u32 = i32::MAX as u32;

/// The image config JSON's shape (Docker's names; OCI's are the same).
#[derive(Deserialize)]
struct WireImage {
    #[serde(default)]
    config: Option<WireConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct WireConfig {
    user: Option<String>,
    exposed_ports: Option<BTreeMap<String, IgnoredAny>>,
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    volumes: Option<BTreeMap<String, IgnoredAny>>,
    working_dir: Option<String>,
    stop_signal: Option<String>,
    healthcheck: Option<WireHealthcheck>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct WireHealthcheck {
    test: Option<Vec<String>>,
    interval: Option<i64>,
    timeout: Option<i64>,
    start_period: Option<i64>,
    retries: Option<i64>,
}

/// Nanoseconds as Docker writes them; negative ones (which Docker refuses at
/// create time) count as 0, the default.
fn nanos(n: Option<i64>) -> Duration {
    Duration::from_nanos(n.unwrap_or(0).max(0) as u64)
}

/// `80` → `80/tcp`, `53/UDP` → `53/udp` (Docker's `nat.NewPort` form).
fn normalize_port(p: &str) -> String {
    match p.split_once('/') {
        Some((port, proto)) => format!("{port}/{}", proto.to_ascii_lowercase()),
        None => format!("{p}/tcp"),
    }
}

/// Sort key of a `port/proto`: by port number, then protocol.
fn port_key(p: &str) -> (u32, String) {
    let (port, proto) = p.split_once('/').unwrap_or((p, ""));
    let first = port.split('-').next().unwrap_or(port);
    (first.parse().unwrap_or(u32::MAX), format!("{port}/{proto}"))
}

impl ImageRunConfig {
    /// Reads the fields that decide how a container runs from an image
    /// config blob (OCI or Docker schema2 JSON). Empty strings count as unset.
    pub fn from_config_json(bytes: &[u8]) -> Result<ImageRunConfig, LaunchError> {
        let wire: WireImage =
            serde_json::from_slice(bytes).map_err(|e| LaunchError::BadConfig(e.to_string()))?;
        let c = wire.config.unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let mut exposed_ports: Vec<String> = c
            .exposed_ports
            .unwrap_or_default()
            .keys()
            .map(|p| normalize_port(p))
            .collect();
        exposed_ports.sort_by_key(|p| port_key(p));
        exposed_ports.dedup();
        let healthcheck = c.healthcheck.map(|h| ImageHealthcheck {
            test: h.test.unwrap_or_default(),
            interval: nanos(h.interval),
            timeout: nanos(h.timeout),
            start_period: nanos(h.start_period),
            retries: h.retries.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
        });
        Ok(ImageRunConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: non_empty(c.working_dir),
            user: non_empty(c.user),
            stop_signal: non_empty(c.stop_signal),
            healthcheck,
            exposed_ports,
            volumes: c.volumes.unwrap_or_default().into_keys().collect(),
        })
    }
}

/// The signal that stops a replica: the manifest's `stop_signal` when set,
/// else the image's `StopSignal` when it names a signal, else SIGTERM — as
/// Docker's `Container.StopSignal()` (an image signal it cannot parse counts
/// as unset there too).
pub fn stop_signal(manifest: Option<&Signal>, image: Option<&str>) -> Signal {
    manifest
        .cloned()
        .or_else(|| image.and_then(Signal::parse))
        .unwrap_or_else(Signal::term)
}

/// The argv Docker runs: `entrypoint` (manifest) replaces the image's
/// Entrypoint and clears its Cmd; `command` (manifest) replaces the Cmd only;
/// the result is Entrypoint followed by Cmd.
pub fn resolve_args(
    image: &ImageRunConfig,
    entrypoint: Option<&[String]>,
    command: Option<&[String]>,
) -> Vec<String> {
    let (ep, image_cmd): (&[String], &[String]) = match entrypoint {
        Some(ep) => (ep, &[]),
        None => (&image.entrypoint, &image.cmd),
    };
    let cmd = command.unwrap_or(image_cmd);
    ep.iter().chain(cmd.iter()).cloned().collect()
}

/// Merges the image config with the manifest's overrides.
/// The argv follows [`resolve_args`]; `env` wins over the image's; `workdir`
/// and `user` replace the image's; the user resolves as [`resolve_user`]
/// does, and `HOME` (unless an env sets it) is that user's home, else `/`.
/// `lowerdirs` are the image's layer snapshots, top-most first, for name
/// lookups.
#[allow(clippy::too_many_arguments)]
pub fn build_process(
    image: &ImageRunConfig,
    entrypoint: Option<&[String]>,
    command: Option<&[String]>,
    env: &BTreeMap<String, String>,
    workdir: Option<&str>,
    user: Option<&str>,
    hostname: &str,
    lowerdirs: &[PathBuf],
) -> Result<ProcessSpec, LaunchError> {
    let args = resolve_args(image, entrypoint, command);
    if args.is_empty() {
        return Err(LaunchError::NoCommand);
    }
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            merged.insert(k.to_string(), v.to_string());
        }
    }
    merged.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if !merged.contains_key("PATH") {
        let (k, v) = DEFAULT_PATH.split_once('=').unwrap_or(("PATH", "/bin"));
        merged.insert(k.into(), v.into());
    }
    merged
        .entry("HOSTNAME".into())
        .or_insert_with(|| hostname.to_string());
    let user_text = user.or(image.user.as_deref()).unwrap_or("");
    let passwd = read_from_layers(lowerdirs, "etc/passwd");
    let group = read_from_layers(lowerdirs, "etc/group");
    let resolved = resolve_user(user_text, passwd.as_deref(), group.as_deref())?;
    merged.entry("HOME".into()).or_insert(resolved.home);
    let cwd = workdir
        .map(str::to_string)
        .or_else(|| image.working_dir.clone().filter(|w| w.starts_with('/')))
        .unwrap_or_else(|| "/".into());
    Ok(ProcessSpec {
        args,
        env: merged
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        cwd,
        uid: resolved.uid,
        gid: resolved.gid,
        additional_gids: resolved.additional_gids,
    })
}

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].into(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].into(),
            })
        })
        .collect()
}

/// `(name, gid, members)` of `/etc/group` lines.
fn parse_group(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// Reads `rel` (e.g. `etc/passwd`) from the top-most layer that has it as a
/// regular file, refusing symlinks at every component.
fn read_from_layers(lowerdirs: &[PathBuf], rel: &str) -> Option<String> {
    for dir in lowerdirs {
        if let Some(text) = read_no_follow(dir, rel) {
            return Some(text);
        }
    }
    None
}

fn read_no_follow(root: &Path, rel: &str) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut path = root.to_path_buf();
    for comp in rel.split('/') {
        path.push(comp);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if meta.file_type().is_symlink() {
            return None;
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_DB_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Who a container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Sorted, without duplicates; holds `gid`.
    pub additional_gids: Vec<u32>,
    /// The home of the first passwd entry with `uid` (as written, even
    /// empty), else `/` (runc's default).
    pub home: String,
}

/// Resolves a `user` string (`""`, `name`, `uid`, `name:group`, `uid:gid`,
/// `name:gid`, `uid:group`, `:group`) against the image's passwd and group
/// files (`None` when the image has none), as Docker does (moby/sys/user
/// `GetExecUser` with no defaults, then runc's `HOME`):
/// - the user part empty means uid 0; a number is always a uid (its passwd
///   entry, if any, gives name, primary gid and home); a name must be in
///   passwd;
/// - without a passwd entry the primary gid is 0 and HOME is `/`;
/// - an explicit group (a number is always a gid; a name must be in group)
///   replaces the primary gid and drops the supplementary groups;
/// - otherwise the supplementary groups are those listing the matched user's
///   name as a member;
/// - the primary gid is also a supplementary group (Docker's
///   `AdditionalGids = [gid] + sgids`);
/// - ids above 2147483647 are refused.
pub fn resolve_user(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, LaunchError> {
    let mut parts = user.splitn(3, ':');
    let u = parts.next().unwrap_or("");
    let g = parts.next().unwrap_or("");
    let out_of_range = || LaunchError::OutOfRange {
        user: user.to_string(),
    };
    let passwd = passwd.map(parse_passwd).unwrap_or_default();
    let groups = group.map(parse_group).unwrap_or_default();
    let numeric_uid = u.parse::<i64>().ok();
    let entry = match (u.is_empty(), numeric_uid) {
        (true, _) => passwd.iter().find(|p| p.uid == 0),
        (false, Some(uid)) => passwd.iter().find(|p| i64::from(p.uid) == uid),
        (false, None) => passwd.iter().find(|p| p.name == u),
    };
    let (uid, mut gid, name) = match (entry, numeric_uid) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.as_str())),
        (None, _) if u.is_empty() => (0, 0, None),
        (None, Some(uid)) => (
            u32::try_from(uid)
                .ok()
                .filter(|id| *id <= MAX_ID)
                .ok_or_else(out_of_range)?,
            0,
            None,
        ),
        (None, None) => {
            return Err(LaunchError::UnknownUser {
                user: u.to_string(),
            })
        }
    };
    if uid > MAX_ID {
        return Err(out_of_range());
    }
    let mut sgids: Vec<u32> = Vec::new();
    if !g.is_empty() {
        gid = match g.parse::<i64>() {
            Ok(n) => groups
                .iter()
                .find(|(_, gid, _)| i64::from(*gid) == n)
                .map(|(_, gid, _)| *gid)
                .or_else(|| u32::try_from(n).ok())
                .filter(|id| *id <= MAX_ID)
                .ok_or_else(out_of_range)?,
            Err(_) => groups
                .iter()
                .find(|(name, _, _)| name == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| LaunchError::UnknownGroup {
                    group: g.to_string(),
                })?,
        };
    } else if let Some(name) = name {
        sgids = groups
            .iter()
            .filter(|(_, _, members)| members.iter().any(|m| m == name))
            .map(|(_, gid, _)| *gid)
            .collect();
    }
    if gid > MAX_ID {
        return Err(out_of_range());
    }
    sgids.push(gid);
    sgids.sort_unstable();
    sgids.dedup();
    let home = passwd
        .iter()
        .find(|p| p.uid == uid)
        .map_or_else(|| "/".into(), |p| p.home.clone());
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: sgids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageRunConfig {
        ImageRunConfig {
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into(), "MODE=image".into()],
            working_dir: Some("/www".into()),
            ..Default::default()
        }
    }

    fn layers() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let bottom = dir.path().join("bottom");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::write(
            bottom.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nold:x:5:5::/old:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            top.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            top.join("etc/group"),
            "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
        )
        .unwrap();
        (dir, vec![top, bottom])
    }

    #[test]
    fn image_defaults_and_manifest_overrides() {
        let p = build_process(
            &image(),
            None,
            None,
            &BTreeMap::new(),
            None,
            None,
            "web-1",
            &[],
        )
        .unwrap();
        assert_eq!(p.args, ["/bin/busybox", "httpd", "-f"]);
        assert_eq!(p.cwd, "/www");
        assert!(p.env.contains(&"MODE=image".to_string()));
        assert!(p.env.contains(&"HOSTNAME=web-1".to_string()));
        assert_eq!((p.uid, p.gid), (0, 0));

        let env = BTreeMap::from([("MODE".to_string(), "prod".to_string())]);
        let cmd = vec!["/bin/sh".to_string(), "-c".to_string(), "true".to_string()];
        let p = build_process(
            &image(),
            Some(&cmd),
            None,
            &env,
            Some("/srv"),
            Some("1000:1000"),
            "web-1",
            &[],
        )
        .unwrap();
        assert_eq!(p.args, cmd);
        assert_eq!(p.cwd, "/srv");
        assert!(
            p.env.contains(&"MODE=prod".to_string()) && !p.env.contains(&"MODE=image".to_string())
        );
        assert_eq!((p.uid, p.gid), (1000, 1000));
    }

    #[test]
    fn entrypoint_and_command_as_docker_and_compose() {
        let img = ImageRunConfig {
            entrypoint: vec!["/entry.sh".into()],
            cmd: vec!["postgres".into()],
            ..Default::default()
        };
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        type Case<'a> = (Option<&'a [&'a str]>, Option<&'a [&'a str]>, &'a [&'a str]);
        let cases: &[Case] = &[
            (None, None, &["/entry.sh", "postgres"]),
            // Compose `command`: replaces Cmd only; the entrypoint script still runs.
            (
                None,
                Some(&["postgres", "-c", "fsync=off"]),
                &["/entry.sh", "postgres", "-c", "fsync=off"],
            ),
            // `entrypoint` clears the image's Cmd (docker run --entrypoint).
            (Some(&["/bin/sh"]), None, &["/bin/sh"]),
            (
                Some(&["/bin/sh"]),
                Some(&["-c", "true"]),
                &["/bin/sh", "-c", "true"],
            ),
            // An empty entrypoint: the command is the whole argv.
            (Some(&[]), Some(&["/bin/true"]), &["/bin/true"]),
        ];
        for (ep, cmd, want) in cases {
            let ep = ep.map(v);
            let cmd = cmd.map(v);
            assert_eq!(
                resolve_args(&img, ep.as_deref(), cmd.as_deref()),
                v(want),
                "{ep:?} {cmd:?}"
            );
        }
        let no_entry = ImageRunConfig {
            cmd: vec!["sh".into()],
            ..Default::default()
        };
        assert_eq!(
            resolve_args(&no_entry, None, Some(&v(&["/bin/true"]))),
            v(&["/bin/true"])
        );
    }

    #[test]
    fn nothing_to_run_is_an_error() {
        let empty = ImageRunConfig::default();
        assert!(matches!(
            build_process(&empty, None, None, &BTreeMap::new(), None, None, "h", &[]),
            Err(LaunchError::NoCommand)
        ));
    }

    #[test]
    fn names_resolve_from_the_topmost_layer() {
        let (_d, lowers) = layers();
        let p = build_process(
            &image(),
            None,
            None,
            &BTreeMap::new(),
            None,
            Some("app"),
            "h",
            &lowers,
        )
        .unwrap();
        assert_eq!(
            (p.uid, p.gid, p.additional_gids.clone()),
            (1000, 1000, vec![1000, 2000])
        );
        assert!(p.env.contains(&"HOME=/home/app".to_string()));
        let p = build_process(
            &image(),
            None,
            None,
            &BTreeMap::new(),
            None,
            Some("app:extra"),
            "h",
            &lowers,
        )
        .unwrap();
        assert_eq!(p.gid, 2000);
        // `old` exists only in a lower layer shadowed by the top passwd.
        assert!(matches!(
            build_process(
                &image(),
                None,
                None,
                &BTreeMap::new(),
                None,
                Some("old"),
                "h",
                &lowers
            ),
            Err(LaunchError::UnknownUser { .. })
        ));
        assert!(matches!(
            build_process(
                &image(),
                None,
                None,
                &BTreeMap::new(),
                None,
                Some("app:nogroup"),
                "h",
                &lowers
            ),
            Err(LaunchError::UnknownGroup { .. })
        ));
    }

    #[test]
    fn a_symlinked_passwd_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("l");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::write(dir.path().join("host-passwd"), "evil:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("host-passwd"), layer.join("etc/passwd"))
            .unwrap();
        assert!(matches!(
            build_process(
                &image(),
                None,
                None,
                &BTreeMap::new(),
                None,
                Some("evil"),
                "h",
                &[layer]
            ),
            Err(LaunchError::UnknownUser { .. })
        ));
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        dup:x:1000:1000::/home/dup:/bin/sh\n\
        nohome:x:1500:1500:::/bin/sh\n";
    const GROUP: &str = "root:x:0:root\nwheel:x:10:root,app\napp:x:1000:\nextra:x:2000:app\n";

    /// Each row is what `docker run --user USER` (Docker 20.10 with runc,
    /// checked by hand on images with and without these files) gives:
    /// `id -u`, `id -g`, the `Groups:` line of /proc/self/status, and HOME.
    #[test]
    fn users_resolve_as_docker_resolves_them() {
        type Row<'a> = (
            &'a str,
            bool,
            Result<(u32, u32, &'a [u32], &'a str), &'a str>,
            &'a str,
        );
        let rows: &[Row] = &[
            // (user, image has passwd+group, expected, the Docker rule)
            (
                "",
                true,
                Ok((0, 0, &[0, 10], "/root")),
                "no user: uid 0's entry, its memberships",
            ),
            (
                "",
                false,
                Ok((0, 0, &[0], "/")),
                "no user, no passwd: root, HOME /",
            ),
            (
                "0",
                true,
                Ok((0, 0, &[0, 10], "/root")),
                "a uid is looked up in passwd",
            ),
            ("root", true, Ok((0, 0, &[0, 10], "/root")), "a name"),
            (
                "app",
                true,
                Ok((1000, 1000, &[10, 1000, 2000], "/home/app")),
                "memberships + primary gid",
            ),
            (
                "1000",
                true,
                Ok((1000, 1000, &[10, 1000, 2000], "/home/app")),
                "first entry of a uid wins",
            ),
            (
                "1000:2000",
                true,
                Ok((1000, 2000, &[2000], "/home/app")),
                "explicit gid: no memberships",
            ),
            (
                "app:extra",
                true,
                Ok((1000, 2000, &[2000], "/home/app")),
                "group by name",
            ),
            (
                "app:3000",
                true,
                Ok((1000, 3000, &[3000], "/home/app")),
                "a gid need not be in group",
            ),
            (
                "1234",
                true,
                Ok((1234, 0, &[0], "/")),
                "bare uid without entry: gid 0, HOME /",
            ),
            (
                "1234",
                false,
                Ok((1234, 0, &[0], "/")),
                "bare uid, no passwd at all",
            ),
            (
                "1234:5",
                true,
                Ok((1234, 5, &[5], "/")),
                "uid:gid without entries",
            ),
            (
                "1234:extra",
                true,
                Ok((1234, 2000, &[2000], "/")),
                "uid:group",
            ),
            (
                "0:10",
                true,
                Ok((0, 10, &[10], "/root")),
                "HOME follows the uid",
            ),
            (
                ":2000",
                true,
                Ok((0, 2000, &[2000], "/root")),
                "empty user part: uid 0",
            ),
            (
                "1500",
                true,
                Ok((1500, 1500, &[1500], "")),
                "an empty home field stays empty (runc)",
            ),
            (
                "1000",
                false,
                Ok((1000, 0, &[0], "/")),
                "no passwd: the uid stands alone",
            ),
            (
                "nosuch",
                true,
                Err("unable to find user nosuch"),
                "unknown name",
            ),
            (
                "root",
                false,
                Err("unable to find user root"),
                "a name needs passwd",
            ),
            (
                "app:nosuch",
                true,
                Err("unable to find group nosuch"),
                "unknown group",
            ),
            (
                "1234:extra",
                false,
                Err("unable to find group extra"),
                "a group name needs group",
            ),
            (
                "2147483648",
                true,
                Err("must be in range 0-2147483647"),
                "uid range",
            ),
            ("-1", true, Err("must be in range"), "negative uid"),
            ("0:2147483648", true, Err("must be in range"), "gid range"),
        ];
        for (user, files, want, rule) in rows {
            let (pw, gr) = if *files {
                (Some(PASSWD), Some(GROUP))
            } else {
                (None, None)
            };
            let got = resolve_user(user, pw, gr);
            match (want, got) {
                (Ok((uid, gid, groups, home)), Ok(r)) => assert_eq!(
                    (r.uid, r.gid, r.additional_gids.as_slice(), r.home.as_str()),
                    (*uid, *gid, *groups, *home),
                    "user {user:?} (files: {files}): {rule}"
                ),
                (Err(needle), Err(e)) => assert!(
                    e.to_string().contains(needle),
                    "user {user:?}: {e} lacks {needle:?} ({rule})"
                ),
                (want, got) => {
                    panic!("user {user:?} (files: {files}): want {want:?}, got {got:?} ({rule})")
                }
            }
        }
    }

    #[test]
    fn home_comes_from_env_before_passwd() {
        let mut img = image();
        img.user = Some("1234".into());
        let p = build_process(&img, None, None, &BTreeMap::new(), None, None, "h", &[]).unwrap();
        assert!(p.env.contains(&"HOME=/".to_string()), "{:?}", p.env);
        assert_eq!((p.uid, p.gid), (1234, 0));
        let env = BTreeMap::from([("HOME".to_string(), "/custom".to_string())]);
        let p = build_process(&img, None, None, &env, None, None, "h", &[]).unwrap();
        assert!(p.env.contains(&"HOME=/custom".to_string()), "{:?}", p.env);
        // The manifest's user replaces the image's.
        let (_d, lowers) = layers();
        let p = build_process(
            &img,
            None,
            None,
            &BTreeMap::new(),
            None,
            Some("app"),
            "h",
            &lowers,
        )
        .unwrap();
        assert_eq!(p.uid, 1000);
    }

    #[test]
    fn stop_signal_precedence() {
        let sig = |s: &str| Signal::parse(s).unwrap();
        // (manifest, image StopSignal, effective, Docker's rule)
        let rows: &[(Option<&str>, Option<&str>, &str, &str)] = &[
            (None, None, "SIGTERM", "neither: SIGTERM"),
            (None, Some("SIGINT"), "SIGINT", "the image's (postgres)"),
            (None, Some("SIGQUIT"), "SIGQUIT", "the image's (nginx)"),
            (None, Some("2"), "SIGINT", "a number"),
            (None, Some("int"), "SIGINT", "any case, no SIG prefix"),
            (
                None,
                Some("SIGRTMIN+3"),
                "SIGRTMIN+3",
                "real-time (systemd)",
            ),
            (
                None,
                Some("SIGBOGUS"),
                "SIGTERM",
                "an unparsable image signal counts as unset",
            ),
            (
                Some("SIGTERM"),
                Some("SIGINT"),
                "SIGTERM",
                "the manifest wins",
            ),
            (Some("SIGHUP"), None, "SIGHUP", "the manifest alone"),
        ];
        for (manifest, image, want, rule) in rows {
            let m = manifest.map(sig);
            assert_eq!(stop_signal(m.as_ref(), *image).name, *want, "{rule}");
        }
        assert_eq!(stop_signal(None, Some("SIGINT")).number, 2);
    }

    #[test]
    fn image_config_json_is_read_as_docker_writes_it() {
        let json = br#"{
            "architecture": "amd64", "os": "linux",
            "config": {
                "User": "1234",
                "ExposedPorts": {"8080/tcp": {}, "443/tcp": {}, "53/UDP": {}, "9000": {}},
                "Env": ["PATH=/bin"],
                "Entrypoint": ["/entry.sh"],
                "Cmd": ["postgres"],
                "Volumes": {"/var/lib/postgresql/data": {}, "/b": {}},
                "WorkingDir": "",
                "StopSignal": "SIGINT",
                "Healthcheck": {"Test": ["CMD-SHELL", "pg_isready"], "Interval": 2000000000,
                    "Timeout": 500000000, "StartPeriod": 0, "Retries": 4},
                "Labels": {"a": "b"}
            },
            "rootfs": {"type": "layers", "diff_ids": []}
        }"#;
        let c = ImageRunConfig::from_config_json(json).unwrap();
        assert_eq!(c.user.as_deref(), Some("1234"));
        assert_eq!(
            c.exposed_ports,
            ["53/udp", "443/tcp", "8080/tcp", "9000/tcp"]
        );
        assert_eq!(c.volumes, ["/b", "/var/lib/postgresql/data"]);
        assert_eq!(c.working_dir, None, "an empty WorkingDir is unset");
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(
            c.healthcheck,
            Some(ImageHealthcheck {
                test: vec!["CMD-SHELL".into(), "pg_isready".into()],
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
                start_period: Duration::ZERO,
                retries: 4,
            })
        );
        assert_eq!(resolve_args(&c, None, None), ["/entry.sh", "postgres"]);
        // A config without `config`, or with nulls, is empty, not an error.
        let empty =
            ImageRunConfig::from_config_json(br#"{"config": {"Env": null, "Healthcheck": null}}"#)
                .unwrap();
        assert_eq!(empty, ImageRunConfig::default());
        assert_eq!(
            ImageRunConfig::from_config_json(b"{}").unwrap(),
            ImageRunConfig::default()
        );
        assert!(matches!(
            ImageRunConfig::from_config_json(br#"{"config": {"Healthcheck": {"Interval": "2s"}}}"#),
            Err(LaunchError::BadConfig(_))
        ));
    }

    #[test]
    fn a_record_written_by_an_older_berthd_still_reads() {
        let old = r#"{"entrypoint":["/bin/sh"],"cmd":[],"env":["PATH=/bin"],"working_dir":null,"user":"app"}"#;
        let c: ImageRunConfig = serde_json::from_str(old).unwrap();
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!((c.stop_signal, c.healthcheck), (None, None));
        assert!(c.exposed_ports.is_empty() && c.volumes.is_empty());
    }
}
