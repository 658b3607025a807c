//! What a container runs: the image's Entrypoint/Cmd/Env/WorkingDir/User
//! merged with the manifest's overrides (Docker's rules), and `user` resolved
//! against the image's own `/etc/passwd` and `/etc/group`, read safely from its
//! layer snapshots (top-most first, never following a link out of a layer).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The parts of an OCI image config that decide what runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// The config's `Volumes` paths, as written (records of older agents: empty).
    #[serde(default)]
    pub volumes: Vec<String>,
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
    pub additional_gids: Vec<u32>,
}

/// Why a process could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("nothing to run: the image has no Entrypoint or Cmd and the manifest sets no command")]
    NoCommand,
    #[error("user `{user}` is not in the image's /etc/passwd")]
    UnknownUser { user: String },
    #[error("group `{group}` is not in the image's /etc/group")]
    UnknownGroup { group: String },
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Largest passwd/group file read from an image.
const MAX_DB_BYTES: u64 = 1 << 20;

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
/// and `user` replace the image's. `lowerdirs` are the image's layer
/// snapshots, top-most first, for name lookups.
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
    let user_text = user.or(image.user.as_deref()).filter(|u| !u.is_empty());
    let (uid, gid, additional_gids, home) = match user_text {
        None => (0, 0, Vec::new(), Some("/root".to_string())),
        Some(u) => resolve_user(u, lowerdirs)?,
    };
    if let Some(home) = home {
        merged.entry("HOME".into()).or_insert(home);
    } else {
        merged.entry("HOME".into()).or_insert_with(|| "/".into());
    }
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
        uid,
        gid,
        additional_gids,
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

type ResolvedUser = (u32, u32, Vec<u32>, Option<String>);

fn resolve_user(user: &str, lowerdirs: &[PathBuf]) -> Result<ResolvedUser, LaunchError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_from_layers(lowerdirs, "etc/passwd")
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    let groups = read_from_layers(lowerdirs, "etc/group")
        .map(|t| parse_group(&t))
        .unwrap_or_default();
    let entry = match u.parse::<u32>() {
        Ok(uid) => passwd
            .iter()
            .find(|p| p.uid == uid)
            .cloned()
            .or(Some(PasswdEntry {
                name: String::new(),
                uid,
                gid: uid,
                home: "/".into(),
            })),
        Err(_) => passwd.iter().find(|p| p.name == u).cloned(),
    };
    let entry = entry.ok_or_else(|| LaunchError::UnknownUser {
        user: u.to_string(),
    })?;
    let gid = match g {
        None => entry.gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|(name, _, _)| name == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| LaunchError::UnknownGroup {
                    group: g.to_string(),
                })?,
        },
    };
    let mut additional: Vec<u32> = if entry.name.is_empty() {
        Vec::new()
    } else {
        groups
            .iter()
            .filter(|(_, _, members)| members.contains(&entry.name))
            .map(|(_, gid, _)| *gid)
            .collect()
    };
    additional.retain(|x| *x != gid);
    additional.sort_unstable();
    additional.dedup();
    Ok((entry.uid, gid, additional, Some(entry.home)))
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
            user: None,
            volumes: Vec::new(),
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
            (1000, 1000, vec![2000])
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
}
