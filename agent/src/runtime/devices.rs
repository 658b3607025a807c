//! The devices a container may use: the OCI default devices (`null`, `zero`,
//! `full`, `random`, `urandom`, `tty`, `console`, `ptmx` and the pty slaves,
//! as runc allows them) and nothing else — no other host device can be opened
//! and no other device node made (mknod), on any mount. Enforced by the
//! devices cgroup: on v1 `devices.deny a` then one `devices.allow` line per
//! rule ([`v1_allow_lines`]); on v2 an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the container's cgroup
//! ([`bpf_program`], assembled with rbpf and checked here in its interpreter).

/// Building the v2 program failed (a bug: the rules are fixed).
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("assembling the device filter: {0}")]
    Assemble(String),
}

/// A character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevKind {
    Char,
    Block,
}

impl DevKind {
    /// `c` or `b`, as devices.allow writes it.
    pub fn letter(self) -> char {
        match self {
            DevKind::Char => 'c',
            DevKind::Block => 'b',
        }
    }
    /// `BPF_DEVCG_DEV_CHAR` / `BPF_DEVCG_DEV_BLOCK`.
    pub fn bpf(self) -> u32 {
        match self {
            DevKind::Char => 2,
            DevKind::Block => 1,
        }
    }
}

/// Access bits, with the values of `BPF_DEVCG_ACC_*`.
pub mod access {
    /// mknod of the node.
    pub const MKNOD: u32 = 1;
    pub const READ: u32 = 2;
    pub const WRITE: u32 = 4;
    pub const ALL: u32 = MKNOD | READ | WRITE;
}

/// One allowed device (or range, with `None` as the wildcard `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: DevKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// [`access`] bits.
    pub access: u32,
    /// What it is, for docs and errors.
    pub what: &'static str,
}

const fn rwm(major: u32, minor: Option<u32>, what: &'static str) -> DeviceRule {
    DeviceRule {
        kind: DevKind::Char,
        major: Some(major),
        minor,
        access: access::ALL,
        what,
    }
}

/// What every container may use (runc's default allow list without its
/// `c *:* m` / `b *:* m` wildcards: a node for any other device cannot even
/// be made). Everything else is denied.
pub const ALLOWED: &[DeviceRule] = &[
    rwm(1, Some(3), "/dev/null"),
    rwm(1, Some(5), "/dev/zero"),
    rwm(1, Some(7), "/dev/full"),
    rwm(1, Some(8), "/dev/random"),
    rwm(1, Some(9), "/dev/urandom"),
    rwm(5, Some(0), "/dev/tty"),
    rwm(5, Some(1), "/dev/console"),
    rwm(5, Some(2), "/dev/ptmx"),
    rwm(136, None, "/dev/pts/* (pty slaves)"),
];

/// Whether `rules` allow `acc` ([`access`] bits, all of them) on device
/// `kind major:minor`: the decision both cgroup versions enforce.
pub fn allows(rules: &[DeviceRule], kind: DevKind, major: u32, minor: u32, acc: u32) -> bool {
    rules.iter().any(|r| {
        r.kind == kind
            && r.major.is_none_or(|m| m == major)
            && r.minor.is_none_or(|m| m == minor)
            && acc & !r.access == 0
    })
}

/// The v1 `devices.allow` lines of `rules` (`c 1:3 rwm`, `c 136:* rwm`),
/// written after `a` to `devices.deny`.
pub fn v1_allow_lines(rules: &[DeviceRule]) -> Vec<String> {
    let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
    rules
        .iter()
        .map(|r| {
            let mut acc = String::new();
            for (bit, c) in [
                (access::READ, 'r'),
                (access::WRITE, 'w'),
                (access::MKNOD, 'm'),
            ] {
                if r.access & bit != 0 {
                    acc.push(c);
                }
            }
            format!(
                "{} {}:{} {acc}",
                r.kind.letter(),
                num(r.major),
                num(r.minor)
            )
        })
        .collect()
}

/// The v2 program's source (rbpf assembler syntax). Its context is
/// `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
/// `access_type` holding the device type in its low and the access bits in
/// its high 16 bits. It returns 1 (allow) when a rule matches, else 0.
pub fn bpf_source(rules: &[DeviceRule]) -> String {
    let mut asm = vec![
        "ldxw r2, [r1]".to_string(), // access_type
        "mov32 r3, r2".into(),
        "and32 r2, 0xffff".into(), // r2: type
        "rsh32 r3, 16".into(),     // r3: access
        "ldxw r4, [r1+4]".into(),  // r4: major
        "ldxw r5, [r1+8]".into(),  // r5: minor
    ];
    for r in rules {
        let mut block = Vec::new();
        // Each `+N` below is patched to skip to the next rule.
        block.push(format!("jne r2, {}, +N", r.kind.bpf()));
        if r.access != access::ALL {
            block.push("mov32 r1, r3".into());
            block.push(format!("and32 r1, {:#x}", !r.access & access::ALL));
            block.push("jne r1, 0, +N".into());
        }
        if let Some(m) = r.major {
            block.push(format!("jne r4, {m}, +N"));
        }
        if let Some(m) = r.minor {
            block.push(format!("jne r5, {m}, +N"));
        }
        block.push("mov32 r0, 1".into());
        block.push("exit".into());
        let len = block.len();
        for (i, line) in block.iter_mut().enumerate() {
            if line.ends_with("+N") {
                // The jump lands on the first instruction after the block.
                *line = line.replace("+N", &format!("+{}", len - i - 1));
            }
        }
        asm.extend(block);
    }
    asm.push("mov32 r0, 0".into());
    asm.push("exit".into());
    asm.join("\n")
}

/// The v2 program of `rules`, as eBPF bytecode ready for `BPF_PROG_LOAD`.
pub fn bpf_program(rules: &[DeviceRule]) -> Result<Vec<u8>, DevicesError> {
    rbpf::assembler::assemble(&bpf_source(rules)).map_err(DevicesError::Assemble)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Runs the program in rbpf's interpreter on one device access.
    fn run(prog: &[u8], kind: u32, major: u32, minor: u32, acc: u32) -> u64 {
        let mut ctx = Vec::new();
        ctx.extend_from_slice(&(kind | acc << 16).to_ne_bytes());
        ctx.extend_from_slice(&major.to_ne_bytes());
        ctx.extend_from_slice(&minor.to_ne_bytes());
        let vm = rbpf::EbpfVmRaw::new(Some(prog)).unwrap();
        vm.execute_program(&mut ctx).unwrap()
    }

    #[test]
    fn the_default_devices_and_nothing_else_are_allowed() {
        use access::{MKNOD, READ, WRITE};
        let table = [
            // (kind, major, minor, access, allowed)
            (DevKind::Char, 1, 3, READ | WRITE, true), // /dev/null
            (DevKind::Char, 1, 3, MKNOD, true),
            (DevKind::Char, 1, 9, READ, true),           // urandom
            (DevKind::Char, 5, 2, READ | WRITE, true),   // ptmx
            (DevKind::Char, 136, 7, READ | WRITE, true), // /dev/pts/7
            (DevKind::Char, 1, 1, READ, false),          // /dev/mem
            (DevKind::Char, 1, 1, MKNOD, false),         // mknod of /dev/mem
            (DevKind::Char, 1, 2, READ, false),          // /dev/kmem
            (DevKind::Char, 1, 11, WRITE, false),        // /dev/kmsg
            (DevKind::Char, 10, 200, READ | WRITE, false), // /dev/net/tun
            (DevKind::Char, 4, 1, READ, false),          // /dev/tty1
            (DevKind::Char, 5, 3, READ, false),
            (DevKind::Block, 1, 3, READ, false), // a block device with null's numbers
            (DevKind::Block, 8, 0, READ, false), // /dev/sda
            (DevKind::Block, 253, 0, MKNOD, false), // /dev/vda
            (DevKind::Block, 7, 0, READ | WRITE, false), // /dev/loop0
        ];
        let prog = bpf_program(ALLOWED).unwrap();
        for (kind, major, minor, acc, want) in table {
            assert_eq!(
                allows(ALLOWED, kind, major, minor, acc),
                want,
                "{kind:?} {major}:{minor} {acc}"
            );
            assert_eq!(
                run(&prog, kind.bpf(), major, minor, acc),
                u64::from(want),
                "program: {kind:?} {major}:{minor} {acc}"
            );
        }
    }

    #[test]
    fn the_program_matches_the_rules_everywhere() {
        // A rule set with every shape: partial access, wildcards, both kinds.
        let rules = [
            DeviceRule {
                kind: DevKind::Block,
                major: Some(8),
                minor: None,
                access: access::READ,
                what: "",
            },
            DeviceRule {
                kind: DevKind::Char,
                major: None,
                minor: Some(4),
                access: access::READ | access::MKNOD,
                what: "",
            },
            rwm(1, Some(3), ""),
        ];
        for rules in [&rules[..], ALLOWED, &[]] {
            let prog = bpf_program(rules).unwrap();
            for kind in [DevKind::Char, DevKind::Block] {
                for major in [0, 1, 5, 8, 136, 4095] {
                    for minor in [0, 1, 3, 4, 9, 1 << 19] {
                        for acc in 1..=access::ALL {
                            assert_eq!(
                                run(&prog, kind.bpf(), major, minor, acc),
                                u64::from(allows(rules, kind, major, minor, acc)),
                                "{kind:?} {major}:{minor} {acc} {rules:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn v1_lines_are_what_runc_writes() {
        let lines = v1_allow_lines(ALLOWED);
        assert_eq!(lines[0], "c 1:3 rwm");
        assert_eq!(lines.last().unwrap(), "c 136:* rwm");
        assert_eq!(lines.len(), ALLOWED.len());
        let partial = DeviceRule {
            kind: DevKind::Block,
            major: None,
            minor: None,
            access: access::READ | access::MKNOD,
            what: "",
        };
        assert_eq!(v1_allow_lines(&[partial]), ["b *:* rm"]);
    }
}
