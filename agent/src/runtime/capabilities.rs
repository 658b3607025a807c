//! The capability set of a container: Docker's default set without
//! `CAP_NET_RAW` ([`DEFAULT_CAPS`]), changed by the service's `cap_add` and
//! `cap_drop` as Docker's `TweakCapabilities` changes it (`ALL` in `cap_add`:
//! every capability but the dropped ones; `ALL` in `cap_drop`: only the added
//! ones). It is the bounding set of every container process, and the
//! permitted and effective sets of a root one; the inheritable and ambient
//! sets are always empty (CVE-2022-24769). The seccomp profile's
//! capability-dependent rules key on it too.

use caps::{Capability, CapsHashSet};

/// Docker's default capabilities minus `CAP_NET_RAW`.
pub const DEFAULT_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// `ALL`, in `cap_add` or `cap_drop`.
pub const ALL: &str = "ALL";

/// A name in `cap_add`/`cap_drop` that is no capability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a Linux capability (write e.g. NET_ADMIN, or ALL)")]
pub struct CapabilityError(pub String);

/// Parses a capability name as Docker does: any case, `CAP_` optional.
pub fn parse(name: &str) -> Result<Capability, CapabilityError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    full.parse::<Capability>()
        .map_err(|_| CapabilityError(name.to_string()))
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case(ALL)
}

/// The container's capability set for `cap_add` and `cap_drop` (Docker's
/// rules, over [`DEFAULT_CAPS`]). `ALL` means every capability this build
/// knows; capabilities the running kernel lacks are left out when applied.
pub fn effective(add: &[String], drop: &[String]) -> Result<CapsHashSet, CapabilityError> {
    let names = |list: &[String]| -> Result<CapsHashSet, CapabilityError> {
        list.iter()
            .filter(|n| !is_all(n))
            .map(|n| parse(n))
            .collect()
    };
    let (added, dropped) = (names(add)?, names(drop)?);
    Ok(if add.iter().any(|n| is_all(n)) {
        caps::all().difference(&dropped).copied().collect()
    } else if drop.iter().any(|n| is_all(n)) {
        added
    } else {
        DEFAULT_CAPS
            .iter()
            .copied()
            .filter(|c| !dropped.contains(c))
            .chain(added)
            .collect()
    })
}

/// The `/proc/<pid>/status` mask (`CapEff:` format) of a set.
pub fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use Capability::*;

    fn set(list: &[Capability]) -> CapsHashSet {
        list.iter().copied().collect()
    }
    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cap_add_and_cap_drop_follow_dockers_rules() {
        let default = set(DEFAULT_CAPS);
        let with = |extra: &[Capability]| {
            let mut s = default.clone();
            s.extend(extra.iter().copied());
            s
        };
        let without = |gone: &[Capability]| {
            let mut s = default.clone();
            for c in gone {
                s.remove(c);
            }
            s
        };
        let all_but = |gone: &[Capability]| {
            let mut s = caps::all();
            for c in gone {
                s.remove(c);
            }
            s
        };
        let table: Vec<(&[&str], &[&str], CapsHashSet)> = vec![
            (&[], &[], default.clone()),
            (&["NET_ADMIN"], &[], with(&[CAP_NET_ADMIN])),
            (&["net_raw"], &[], with(&[CAP_NET_RAW])),
            (&["CAP_SYS_TIME"], &[], with(&[CAP_SYS_TIME])),
            (&[], &["CHOWN"], without(&[CAP_CHOWN])),
            (
                &[],
                &["chown", "CAP_MKNOD"],
                without(&[CAP_CHOWN, CAP_MKNOD]),
            ),
            // Added and dropped: the add wins, as in Docker.
            (&["CHOWN"], &["CHOWN"], default.clone()),
            (&["ALL"], &[], caps::all()),
            (&["all"], &["SYS_ADMIN"], all_but(&[CAP_SYS_ADMIN])),
            (&[], &["ALL"], CapsHashSet::new()),
            (
                &["NET_BIND_SERVICE"],
                &["ALL"],
                set(&[CAP_NET_BIND_SERVICE]),
            ),
        ];
        for (add, drop, want) in table {
            let got = effective(&strings(add), &strings(drop)).unwrap();
            assert_eq!(got, want, "add {add:?} drop {drop:?}");
        }
    }

    #[test]
    fn unknown_names_are_refused_by_name() {
        let e = effective(&strings(&["NET_ADMN"]), &[]).unwrap_err();
        assert_eq!(e, CapabilityError("NET_ADMN".into()));
        assert!(e
            .to_string()
            .contains("`NET_ADMN` is not a Linux capability"));
        assert!(effective(&[], &strings(&[""])).is_err());
    }

    #[test]
    fn default_caps_are_dockers_without_net_raw() {
        assert_eq!(mask(&set(DEFAULT_CAPS)), 0xa80425fb & !(1 << 13));
        assert_eq!(mask(&set(DEFAULT_CAPS)), 0xa80405fb);
        assert!(!DEFAULT_CAPS.contains(&CAP_NET_RAW));
        assert!(!DEFAULT_CAPS.contains(&CAP_SYS_ADMIN));
    }

    #[test]
    fn every_manifest_name_is_a_capability_here() {
        for name in berth_core::manifest::CAPABILITIES {
            parse(name).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(berth_core::manifest::CAPABILITIES.len(), caps::all().len());
    }
}
