//! Image `VOLUME`s the manifest does not mount: each becomes a named volume
//! of its service, `<service>_<path>`, that survives replacement (Compose
//! re-attaches its anonymous volume on recreate; a name makes that explicit
//! and visible in `berthctl volumes`). Such a volume has one writer at a
//! time, like a manifest volume: the pure checks here say when a service
//! would break that (more than one replica, an explicit `start-first`, or a
//! manifest volume taking the same name).

use berth_core::manifest::{Manifest, Service, VolumeSource};
use sha2::{Digest as _, Sha256};

use super::MAX_NAME_LEN;

/// A volume Berth adds for an image `VOLUME`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImplicitVolume {
    /// `<service>_<path>` (see [`volume_name`]).
    pub name: String,
    /// The image's path, cleaned (`/var/lib/x`).
    pub target: String,
    /// The path as the image config writes it.
    pub declared: String,
}

/// Docker's `filepath.Clean` of an absolute path; `None` for a relative
/// path (Docker refuses those) and for `/` (nothing can be mounted there).
pub fn clean_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

/// The volume name of image path `target` (cleaned) of `service`:
/// `<service>_<components joined by _>` when every component is made of
/// `[A-Za-z0-9.-]` and the name fits, e.g. `db_var_lib_postgresql_data`;
/// otherwise `<service>__<16 hex of sha256(path)>`. Service names have no
/// `_`, and the readable form never has `__`, so names of different services
/// or paths never collide.
pub fn volume_name(service: &str, target: &str) -> String {
    let comps: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
    let readable = !comps.is_empty()
        && comps.iter().all(|c| {
            *c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        });
    let name = format!("{service}_{}", comps.join("_"));
    if readable && name.len() <= MAX_NAME_LEN {
        return name;
    }
    let hash = hex::encode(Sha256::digest(target.as_bytes()));
    format!("{service}__{}", &hash[..16])
}

/// The image VOLUMEs of `svc` that no manifest volume (named, host or tmpfs,
/// at the same cleaned path) covers, sorted by target. A path inside a
/// manifest volume still gets its own volume, as Docker mounts it on top.
pub fn implicit_volumes(svc: &Service, image_volumes: &[String]) -> Vec<ImplicitVolume> {
    let mut out: Vec<ImplicitVolume> = Vec::new();
    for declared in image_volumes {
        let Some(target) = clean_path(declared) else {
            continue;
        };
        let covered = svc
            .volumes
            .iter()
            .any(|v| clean_path(&v.target).as_deref() == Some(target.as_str()));
        if covered || out.iter().any(|v| v.target == target) {
            continue;
        }
        out.push(ImplicitVolume {
            name: volume_name(&svc.name, &target),
            target,
            declared: declared.clone(),
        });
    }
    out.sort();
    out
}

/// Why a service cannot run with its image's volumes as the manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterProblem {
    /// `replicas > 1` would write the volume at once.
    Replicas {
        volume: ImplicitVolume,
        replicas: u32,
    },
    /// An explicit `start-first` would overlap old and new replica.
    StartFirst { volume: ImplicitVolume },
    /// A manifest volume of that name is mounted writable elsewhere.
    NameTaken {
        volume: ImplicitVolume,
        other_service: String,
    },
}

impl WriterProblem {
    /// The manifest key the problem is about (for file:line:col).
    pub fn key(&self, service: &str) -> String {
        match self {
            WriterProblem::Replicas { .. } => format!("service.{service}.replicas"),
            WriterProblem::StartFirst { .. } => format!("service.{service}.update.strategy"),
            WriterProblem::NameTaken { .. } => format!("service.{service}"),
        }
    }

    /// What is wrong and how to fix it, for the operator.
    pub fn message(&self, service: &str) -> String {
        let fix = |t: &str| {
            format!(
                "mount a tmpfs there for per-container data ([[service.{service}.volumes]] tmpfs = \"64Mi\", target = \"{t}\"), or a named volume with `shared = true` if several writers are safe"
            )
        };
        match self {
            WriterProblem::Replicas { volume, replicas } => format!(
                "the image declares VOLUME {}, kept as volume `{}` with one writer at a time; {replicas} replicas would write it at once: {}",
                volume.declared, volume.name, fix(&volume.target)
            ),
            WriterProblem::StartFirst { volume } => format!(
                "the image declares VOLUME {}, kept as volume `{}` with one writer at a time; start-first would run two containers on it at once (remove `strategy` to update stop-first, or {})",
                volume.declared, volume.name, fix(&volume.target)
            ),
            WriterProblem::NameTaken { volume, other_service } => format!(
                "the image declares VOLUME {}, kept as volume `{}`, which service `{other_service}` also mounts writable; a volume has one writer at a time (mount it `readonly = true` there, or mount another volume at {} in `{service}`)",
                volume.declared, volume.name, volume.target
            ),
        }
    }
}

/// The one-writer checks for `svc`'s implicit volumes within `manifest`.
/// `start_first_written` says whether the manifest sets `start-first`
/// explicitly (the default for a service whose only single-writer volumes
/// come from the image is overridden to stop-first by the reconciler).
pub fn writer_problems(
    manifest: &Manifest,
    svc: &Service,
    implicit: &[ImplicitVolume],
    start_first_written: bool,
) -> Vec<WriterProblem> {
    let mut out = Vec::new();
    for v in implicit {
        if svc.replicas > 1 {
            out.push(WriterProblem::Replicas {
                volume: v.clone(),
                replicas: svc.replicas,
            });
        }
        if start_first_written {
            out.push(WriterProblem::StartFirst { volume: v.clone() });
        }
        for other in manifest.services.values() {
            let writes = other.volumes.iter().any(|m| {
                !m.readonly && matches!(&m.source, VolumeSource::Named(n) if *n == v.name)
            });
            if writes {
                out.push(WriterProblem::NameTaken {
                    volume: v.clone(),
                    other_service: other.name.clone(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(text: &str) -> (Manifest, Service) {
        let m = Manifest::from_str_named("t.toml", text).unwrap();
        let s = m.services.values().next().unwrap().clone();
        (m, s)
    }

    #[test]
    fn paths_are_cleaned_as_docker_does() {
        let cases = [
            ("/data", Some("/data")),
            ("/data/", Some("/data")),
            ("//var//lib/./pg/", Some("/var/lib/pg")),
            ("/a/../b", Some("/b")),
            ("/../..", None),
            ("/", None),
            ("data", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(clean_path(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn names_are_readable_deterministic_and_unambiguous() {
        assert_eq!(
            volume_name("db", "/var/lib/postgresql/data"),
            "db_var_lib_postgresql_data"
        );
        assert_eq!(volume_name("redis", "/data"), "redis_data");
        assert_eq!(volume_name("web", "/srv/.cache"), "web_srv_.cache");
        // `_` inside a component would be ambiguous with the separator.
        let a = volume_name("app", "/a_b");
        let b = volume_name("app", "/a/b");
        assert_eq!(b, "app_a_b");
        assert_ne!(a, b);
        assert!(
            a.starts_with("app__") && a.len() == "app__".len() + 16,
            "{a}"
        );
        assert_eq!(a, volume_name("app", "/a_b"), "deterministic");
        // Services `a-b` + `/c` and `a` + `/b-c` cannot meet: `_` splits them.
        assert_ne!(volume_name("a-b", "/c"), volume_name("a", "/b-c"));
        // Too long for a readable name: hashed, still within the limit.
        let long = format!("/{}", "x".repeat(200));
        let n = volume_name(&"s".repeat(63), &long);
        assert!(
            n.len() <= MAX_NAME_LEN && super::super::valid_name(&n),
            "{n}"
        );
        for n in [a, b] {
            assert!(super::super::valid_name(&n), "{n}");
        }
    }

    #[test]
    fn only_uncovered_image_volumes_become_implicit() {
        let (_, svc) = service(
            "[service.db]\nimage = \"r/db:1\"\n[[service.db.volumes]]\nname = \"pg\"\ntarget = \"/var/lib/pg\"\n[[service.db.volumes]]\ntmpfs = \"1Mi\"\ntarget = \"/scratch\"\n",
        );
        let image = [
            "/var/lib/pg/".to_string(),
            "/scratch".into(),
            "/data".into(),
            "/data/".into(),
            "/var/lib/pg/wal".into(),
            "relative".into(),
        ];
        let got: Vec<(String, String)> = implicit_volumes(&svc, &image)
            .into_iter()
            .map(|v| (v.name, v.target))
            .collect();
        assert_eq!(
            got,
            vec![
                ("db_data".to_string(), "/data".to_string()),
                (
                    "db_var_lib_pg_wal".to_string(),
                    "/var/lib/pg/wal".to_string()
                ),
            ]
        );
    }

    #[test]
    fn one_writer_problems() {
        let img = ["/data".to_string()];
        type Case<'a> = (&'a str, bool, &'a [&'a str]);
        let cases: &[Case] = &[
            ("[service.db]\nimage = \"r/db:1\"\n", false, &[]),
            ("[service.db]\nimage = \"r/db:1\"\nreplicas = 3\n", false, &["replicas"]),
            ("[service.db]\nimage = \"r/db:1\"\n", true, &["start-first"]),
            // A tmpfs at the path: no implicit volume, nothing to check.
            ("[service.db]\nimage = \"r/db:1\"\nreplicas = 3\n[[service.db.volumes]]\ntmpfs = \"1Mi\"\ntarget = \"/data\"\n", false, &[]),
            // Another service writing `db_data` by name.
            ("[service.db]\nimage = \"r/db:1\"\n[service.bk]\nimage = \"r/bk:1\"\n[[service.bk.volumes]]\nname = \"db_data\"\ntarget = \"/b\"\n", false, &["bk"]),
            // ... reading it is fine.
            ("[service.db]\nimage = \"r/db:1\"\n[service.bk]\nimage = \"r/bk:1\"\n[[service.bk.volumes]]\nname = \"db_data\"\ntarget = \"/b\"\nreadonly = true\n", false, &[]),
        ];
        for (text, start_first, want) in cases {
            let m = Manifest::from_str_named("t.toml", text).unwrap();
            let svc = &m.services["db"];
            let implicit = implicit_volumes(svc, &img);
            let got = writer_problems(&m, svc, &implicit, *start_first);
            assert_eq!(got.len(), want.len(), "{text}: {got:?}");
            for (p, w) in got.iter().zip(want.iter()) {
                let msg = p.message("db");
                assert!(
                    msg.contains("VOLUME /data") && msg.contains("db_data"),
                    "{msg}"
                );
                match p {
                    WriterProblem::Replicas { .. } => {
                        assert_eq!(*w, "replicas");
                        assert!(
                            msg.contains("tmpfs") && msg.contains("shared = true"),
                            "{msg}"
                        );
                        assert_eq!(p.key("db"), "service.db.replicas");
                    }
                    WriterProblem::StartFirst { .. } => assert_eq!(*w, "start-first"),
                    WriterProblem::NameTaken { other_service, .. } => assert_eq!(other_service, w),
                }
            }
        }
    }
}
