//! End to end: the security defaults and per-service settings as a user of
//! the manifest sees them in a running replica — capabilities (`cap_add`,
//! `cap_drop`, empty inheritable and ambient sets), the seccomp allowlist
//! (unknown and newer syscalls `ENOSYS`, Docker's denials `EPERM`,
//! `seccomp = "unconfined"` and a JSON profile file) and the checks at apply
//! (bad capability names and profiles refused with their location).
//! The probes are hand-made x86_64 binaries: the file builds on x86_64 only.
#![cfg(target_arch = "x86_64")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_e2e::registry::{Compression, ImageBuilder, LayerBuilder, TestRegistry};
use berth_e2e::*;

/// A static x86_64 ELF executable running `code` (one R+X segment, no libc).
fn tiny_elf(code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let size = HEADERS + code.len() as u64;
    let mut e = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
    e.extend(2u16.to_le_bytes()); // ET_EXEC
    e.extend(62u16.to_le_bytes()); // EM_X86_64
    e.extend(1u32.to_le_bytes());
    e.extend((BASE + HEADERS).to_le_bytes());
    e.extend(64u64.to_le_bytes());
    e.extend(0u64.to_le_bytes());
    e.extend(0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        e.extend(v.to_le_bytes());
    }
    e.extend(1u32.to_le_bytes()); // PT_LOAD
    e.extend(5u32.to_le_bytes()); // R+X
    e.extend(0u64.to_le_bytes());
    e.extend(BASE.to_le_bytes());
    e.extend(BASE.to_le_bytes());
    e.extend(size.to_le_bytes());
    e.extend(size.to_le_bytes());
    e.extend(0x1000u64.to_le_bytes());
    e.extend_from_slice(code);
    e
}

/// `syscall(nr, arg0)`, then `exit_group(errno)` (0 on success).
fn syscall_program(nr: u32, arg0: u32) -> Vec<u8> {
    let mut code = vec![0xb8];
    code.extend(nr.to_le_bytes());
    code.push(0xbf);
    code.extend(arg0.to_le_bytes());
    code.extend([0x0f, 0x05]);
    // neg eax; mov edi, eax; mov eax, 231; syscall
    code.extend(b"\xf7\xd8\x89\xc7\xb8\xe7\x00\x00\x00\x0f\x05");
    code
}

const PROBES: &[(&str, u32, u32)] = &[
    ("madeup", 999, 0),
    ("keyctl", 250, 9999),
    ("userns", 272, libc::CLONE_NEWUSER as u32),
];

/// busybox plus the probes in /probe/.
fn push_probe_image(reg: &TestRegistry) -> String {
    let mut layer = LayerBuilder::new(Compression::Gzip).dir("/probe", 0o755);
    for (name, nr, arg0) in PROBES {
        layer = layer.file(
            &format!("/probe/{name}"),
            &tiny_elf(&syscall_program(*nr, *arg0)),
            0o755,
        );
    }
    let img = ImageBuilder::busybox().layer(layer).build().unwrap();
    reg.push("sec/probe", "1", &img).unwrap();
    reg.image("sec/probe:1")
}

/// Prints the capability sets and each probe's errno, then stays up.
const SCRIPT: &str = "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|Seccomp):' /proc/self/status; \
     for p in madeup keyctl userns; do /probe/$p; echo $p=$?; done; echo done; exec sleep 1000";

/// `key -> value` of the probe output of the running replica of `service`.
fn probe_output(
    agent: &Agent,
    service: &str,
) -> (String, std::collections::BTreeMap<String, String>) {
    let (id, out) = agent.wait_for(40, &format!("{service} probed"), |a| {
        let c = a
            .containers()
            .into_iter()
            .find(|c| c["service"] == service && c["state"] == "running")?;
        let id = c["id"].as_str()?.to_string();
        let out = a.stdout_of(&id);
        out.contains("done\n").then_some((id, out))
    });
    let map = out
        .lines()
        .filter_map(|l| l.split_once(['=', ':']))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    (id, map)
}

fn mask(v: &str) -> u64 {
    u64::from_str_radix(v, 16).unwrap()
}

#[test]
fn capabilities_and_seccomp_per_service() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_probe_image(&reg);
    let agent = Agent::start();
    let profile = agent.state_dir().join("../profile.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )
    .unwrap();
    let profile = std::fs::canonicalize(&profile).unwrap();
    let manifest = |extra_caps: &str| {
        format!(
            r#"
[service.plain]
image = "{image}"
command = ["sh", "-c", "{SCRIPT}"]

[service.caps]
image = "{image}"
command = ["sh", "-c", "{SCRIPT}"]
{extra_caps}

[service.open]
image = "{image}"
command = ["sh", "-c", "{SCRIPT}"]
seccomp = "unconfined"

[service.custom]
image = "{image}"
command = ["sh", "-c", "{SCRIPT}"]
seccomp = "{}"
"#,
            profile.display()
        )
    };
    agent
        .apply_text(
            "m.toml",
            &manifest("cap_add = [\"NET_ADMIN\"]\ncap_drop = [\"CHOWN\"]"),
        )
        .ok();
    let default = berth_agent::runtime::process::default_caps_mask();
    let (net_admin, chown) = (1u64 << 12, 1u64);

    let (_, plain) = probe_output(&agent, "plain");
    assert_eq!(mask(&plain["CapEff"]), default, "{plain:?}");
    assert_eq!(mask(&plain["CapInh"]), 0, "{plain:?}");
    assert_eq!(mask(&plain["CapAmb"]), 0, "{plain:?}");
    assert_eq!(plain["Seccomp"], "2");
    assert_eq!(plain["madeup"], libc::ENOSYS.to_string(), "{plain:?}");
    assert_eq!(plain["keyctl"], libc::EPERM.to_string(), "{plain:?}");
    assert_eq!(plain["userns"], libc::EPERM.to_string(), "{plain:?}");

    let (caps_id, caps) = probe_output(&agent, "caps");
    let eff = mask(&caps["CapEff"]);
    assert_eq!(eff & net_admin, net_admin, "cap_add NET_ADMIN: {caps:?}");
    assert_eq!(eff & chown, 0, "cap_drop CHOWN: {caps:?}");
    assert_eq!(eff, (default | net_admin) & !chown);
    assert_eq!((mask(&caps["CapInh"]), mask(&caps["CapAmb"])), (0, 0));

    // Unconfined: the kernel answers (keyctl's unknown command: EOPNOTSUPP).
    let (_, open) = probe_output(&agent, "open");
    assert_eq!(open["Seccomp"], "0");
    assert_eq!(open["keyctl"], libc::EOPNOTSUPP.to_string(), "{open:?}");

    // The JSON profile: what it says, and nothing else.
    let (_, custom) = probe_output(&agent, "custom");
    assert_eq!(custom["keyctl"], "13", "{custom:?}");
    assert_eq!(custom["userns"], "0", "its default allows: {custom:?}");

    // Capabilities are part of what a container runs: a change replaces it.
    agent
        .apply_text(
            "m.toml",
            &manifest("cap_add = [\"NET_ADMIN\", \"SYS_TIME\"]"),
        )
        .ok();
    agent.wait_for(40, "caps replaced", |a| {
        let running: Vec<_> = a
            .containers()
            .into_iter()
            .filter(|c| c["service"] == "caps" && c["state"] == "running")
            .collect();
        (running.len() == 1 && running[0]["id"] != caps_id.as_str()).then_some(())
    });
    let (_, caps) = probe_output(&agent, "caps");
    assert_eq!(
        mask(&caps["CapEff"]),
        default | net_admin | 1 << 25,
        "{caps:?}"
    );

    // Bad input is refused at apply, located.
    let bad = agent.apply_text(
        "bad.toml",
        &format!("[service.x]\nimage = \"{image}\"\ncap_add = [\"NET_ADMN\"]\n"),
    );
    assert_ne!(bad.code, 0, "{}", bad.stdout);
    assert!(
        bad.stderr.contains("bad.toml:3:")
            && bad
                .stderr
                .contains("`NET_ADMN` is not a Linux capability (did you mean `NET_ADMIN`?)"),
        "{}",
        bad.stderr
    );
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_EROR"}]}"#,
    )
    .unwrap();
    let bad = agent.apply_text("m.toml", &manifest(""));
    assert_ne!(bad.code, 0, "{}", bad.stdout);
    assert!(
        bad.stderr.contains("service.custom.seccomp")
            && bad.stderr.contains(&format!(
                "seccomp profile {}: syscalls[0].action: unknown action \"SCMP_ACT_EROR\"",
                profile.display()
            )),
        "{}",
        bad.stderr
    );
}
