//! Each validation rule with a good and a bad example; bad ones must name
//! file, line, column and key.
#![allow(clippy::unwrap_used)]

use super::*;

fn svc(body: &str) -> String {
    format!("[service.web]\nimage = \"127.0.0.1:5000/shop/web:1.4\"\n{body}\n")
}

fn ok(text: &str) -> Manifest {
    match Manifest::from_str_named("m.toml", text) {
        Ok(m) => m,
        Err(e) => panic!("expected valid manifest, got:\n{e}\n--- manifest ---\n{text}"),
    }
}

/// Asserts the manifest is refused with a problem on `key` at `line`, whose
/// message contains `needle`.
fn bad(text: &str, key: &str, line: usize, needle: &str) {
    let err = Manifest::from_str_named("m.toml", text).expect_err(text);
    let problems = err.problems();
    assert!(
        problems.iter().any(|p| p.key == key && p.line == line && p.file == "m.toml" && p.message.contains(needle)),
        "expected a problem on `{key}` at line {line} containing {needle:?}, got:\n{err}\n--- manifest ---\n{text}"
    );
    let rendered = err.to_string();
    assert!(
        rendered.contains(&format!("m.toml:{line}:")),
        "rendered error lacks file:line: {rendered}"
    );
}

// Rules as (name, good body, bad body, key suffix, message needle). Bodies are
// appended after line 2 of a service, so the bad key sits on line 3.
const RULES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "replicas",
        "replicas = 3",
        "replicas = -1",
        "replicas",
        "between 0 and",
    ),
    (
        "replicas max",
        "replicas = 100",
        "replicas = 101",
        "replicas",
        "between 0 and",
    ),
    (
        "command",
        "command = [\"/bin/httpd\", \"-f\"]",
        "command = []",
        "command",
        "at least the program",
    ),
    (
        "env name",
        "env = { MODE = \"prod\" }",
        "env = { \"A=B\" = \"x\" }",
        "env.A=B",
        "not a valid variable name",
    ),
    (
        "env_file",
        "env_file = \"/etc/berth/web.env\"",
        "env_file = \"web.env\"",
        "env_file",
        "absolute",
    ),
    (
        "workdir",
        "workdir = \"/srv\"",
        "workdir = \"srv/../x\"",
        "workdir",
        "absolute",
    ),
    (
        "user",
        "user = \"1000:1000\"",
        "user = \"a:b:c\"",
        "user",
        "user:group",
    ),
    (
        "stop_signal",
        "stop_signal = \"SIGQUIT\"",
        "stop_signal = \"SIGFOO\"",
        "stop_signal",
        "not a known signal",
    ),
    (
        "stop_timeout",
        "stop_timeout = \"30s\"",
        "stop_timeout = \"10 parsecs\"",
        "stop_timeout",
        "not a duration",
    ),
    (
        "stop_timeout range",
        "stop_timeout = \"1h\"",
        "stop_timeout = \"2h\"",
        "stop_timeout",
        "outside",
    ),
    (
        "pull policy",
        "pull = { policy = \"always\" }",
        "pull = { policy = \"sometimes\" }",
        "pull.policy",
        "not one of",
    ),
    (
        "pull check",
        "pull = { check = \"5m\" }",
        "pull = { check = \"10ms\" }",
        "pull.check",
        "outside",
    ),
    (
        "restart policy",
        "restart = { policy = \"on-failure\" }",
        "restart = { policy = \"maybe\" }",
        "restart.policy",
        "not one of",
    ),
    (
        "backoff order",
        "restart = { backoff = { initial = \"1s\", max = \"2s\" } }",
        "restart = { backoff = { initial = \"5s\", max = \"2s\" } }",
        "restart.backoff",
        "initial must not be longer",
    ),
    (
        "update strategy",
        "update = { strategy = \"stop-first\" }",
        "update = { strategy = \"sideways\" }",
        "update.strategy",
        "not one of",
    ),
    (
        "update progress",
        "update = { max_surge = 0, max_unavailable = 1 }",
        "update = { max_surge = 0, max_unavailable = 0 }",
        "update",
        "cannot both be 0",
    ),
    (
        "update drain",
        "update = { drain = \"2s\" }",
        "update = { drain = \"soon\" }",
        "update.drain",
        "not a duration",
    ),
];

#[test]
fn every_rule_has_a_good_and_a_bad_example() {
    for (name, good, bad_body, key, needle) in RULES {
        let m = ok(&svc(good));
        assert!(m.services.contains_key("web"), "{name}");
        bad(&svc(bad_body), &format!("service.web.{key}"), 3, needle);
    }
}

#[test]
fn defaults_are_filled_in() {
    let m = ok("[service.web]\nimage = \"busybox\"\n");
    let s = &m.services["web"];
    assert_eq!(s.image.to_string(), "docker.io/library/busybox:latest");
    assert_eq!(s.replicas, 1);
    assert_eq!(
        s.stop_signal, None,
        "unset: the image's StopSignal, else SIGTERM"
    );
    assert_eq!(s.stop_timeout, defaults::STOP_TIMEOUT);
    assert_eq!(s.update.strategy, UpdateStrategy::StartFirst);
    assert_eq!((s.update.max_surge, s.update.max_unavailable), (1, 0));
    assert_eq!(s.restart.policy, RestartPolicy::Always);
    assert_eq!(s.pull.policy, PullPolicy::IfMissing);
}

#[test]
fn image_reference_and_digest_grammar() {
    ok("[service.web]\nimage = \"busybox@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\n");
    bad(
        "[service.web]\nimage = \"Shop/Web\"\n",
        "service.web.image",
        2,
        "repository component",
    );
    bad(
        "[service.web]\nimage = \"web@sha256:1234\"\n",
        "service.web.image",
        2,
        "64 lowercase hex",
    );
    bad(
        "[service.web]\nreplicas = 1\n",
        "service.web.image",
        1,
        "missing required key `image`",
    );
}

#[test]
fn service_names() {
    ok("[service.a-1]\nimage = \"busybox\"\n");
    bad(
        "[service.Web_1]\nimage = \"busybox\"\n",
        "service.Web_1",
        1,
        "service name",
    );
}

#[test]
fn sizes_and_resources() {
    ok(&svc(
        "[service.web.resources]\nmemory = \"128Mi\"\ncpus = 0.5\npids = 256",
    ));
    bad(
        &svc("[service.web.resources]\nmemory = \"128 MB\""),
        "service.web.resources.memory",
        4,
        "not a size",
    );
    bad(
        &svc("[service.web.resources]\nmemory = \"1Mi\""),
        "service.web.resources.memory",
        4,
        "between 6Mi",
    );
    bad(
        &svc("[service.web.resources]\ncpus = 0.0"),
        "service.web.resources.cpus",
        4,
        "between 0.001",
    );
    bad(
        &svc("[service.web.resources]\npids = 0"),
        "service.web.resources.pids",
        4,
        "between 1",
    );
    let m = ok(&svc("[service.web.resources]\ncpus = 0.5"));
    assert_eq!(m.services["web"].resources.millicpus, Some(500));
}

#[test]
fn ports() {
    ok(&svc("port = { container = 8080, host = 8080 }"));
    bad(
        &svc("port = { container = 0, host = 8080 }"),
        "service.web.port.container",
        3,
        "outside 1-65535",
    );
    bad(
        &svc("port = { container = 80, host = 70000 }"),
        "service.web.port.host",
        3,
        "outside 1-65535",
    );
}

#[test]
fn host_ports_are_unique_across_services() {
    let text = "[service.a]\nimage = \"busybox\"\nport = { container = 80, host = 8080 }\n\n[service.b]\nimage = \"busybox\"\nports = [{ container = 81, host = 8080, host_ip = \"127.0.0.1\" }]\n";
    bad(
        text,
        "service.b.ports[0].host",
        5,
        "already published by service `a`",
    );
}

#[test]
fn exactly_one_health_check_kind() {
    ok(&svc(
        "[service.web.health]\nhttp = { port = 8080, path = \"/healthz\" }\ninterval = \"2s\"",
    ));
    ok(&svc("[service.web.health]\ntcp = { port = 8080 }"));
    ok(&svc("[service.web.health]\nexec = [\"/bin/true\"]"));
    bad(
        &svc("[service.web.health]\ninterval = \"2s\""),
        "service.web.health",
        3,
        "exactly one of",
    );
    bad(
        &svc("[service.web.health]\ntcp = { port = 1 }\nexec = [\"/bin/true\"]"),
        "service.web.health",
        3,
        "(2 given)",
    );
    bad(
        &svc("[service.web.health]\nhttp = { port = 80, path = \"healthz\" }"),
        "service.web.health.http.path",
        4,
        "must start with `/`",
    );
    bad(
        &svc("[service.web.health]\ntcp = { port = 80 }\nretries = 0"),
        "service.web.health.retries",
        5,
        "between 1 and 100",
    );
    bad(
        &svc("[service.web.health]\ntcp = { port = 80 }\non_unhealthy = \"panic\""),
        "service.web.health.on_unhealthy",
        5,
        "not one of",
    );
}

#[test]
fn volumes_and_secrets() {
    ok(&svc("[[service.web.volumes]]\nname = \"web-data\"\ntarget = \"/data\"\n[[service.web.volumes]]\nhost = \"/srv/x\"\ntarget = \"/x\"\nreadonly = true\n[[service.web.volumes]]\ntmpfs = \"64Mi\"\ntarget = \"/tmp\"\n[[service.web.secrets]]\nsource = \"/etc/berth/pw\"\ntarget = \"db_password\""));
    bad(
        &svc("[[service.web.volumes]]\nname = \"-bad\"\ntarget = \"/data\""),
        "service.web.volumes[0].name",
        4,
        "not a valid volume name",
    );
    bad(
        &svc("[[service.web.volumes]]\nname = \"a\"\nhost = \"/b\"\ntarget = \"/data\""),
        "service.web.volumes[0]",
        3,
        "exactly one of",
    );
    bad(
        &svc("[[service.web.volumes]]\nname = \"a\"\ntarget = \"data\""),
        "service.web.volumes[0].target",
        5,
        "absolute",
    );
    bad(&svc("[[service.web.volumes]]\nname = \"a\"\ntarget = \"/d\"\n[[service.web.volumes]]\ntmpfs = \"1Mi\"\ntarget = \"/d/\""), "service.web.volumes[1].target", 8, "mounted twice");
    bad(
        &svc("[[service.web.volumes]]\ntmpfs = \"lots\"\ntarget = \"/t\""),
        "service.web.volumes[0].tmpfs",
        4,
        "not a size",
    );
    bad(
        &svc("[[service.web.secrets]]\nsource = \"/etc/pw\"\ntarget = \"../pw\""),
        "service.web.secrets[0].target",
        5,
        "file name",
    );
}

#[test]
fn unknown_keys_name_file_line_column_and_key() {
    let err = Manifest::from_str_named(
        "m.toml",
        "[service.web]\nimage = \"busybox\"\nreplica = 2\n",
    )
    .unwrap_err();
    let p = &err.problems()[0];
    assert_eq!((p.file.as_str(), p.line, p.column), ("m.toml", 3, 1));
    assert_eq!(p.key, "service.web.replica");
    assert_eq!(p.message, "unknown key `replica`; did you mean `replicas`?");
    let err = Manifest::from_str_named(
        "m.toml",
        "[service.web]\nimage = \"busybox\"\n[service.web.resources]\nmemroy = \"1G\"\n",
    )
    .unwrap_err();
    assert_eq!(err.problems()[0].key, "service.web.resources.memroy");
    assert_eq!(err.problems()[0].line, 4);
}

#[test]
fn syntax_errors_are_located() {
    let err =
        Manifest::from_str_named("m.toml", "[service.web]\nimage = \"busybox\nreplicas = 2\n")
            .unwrap_err();
    assert_eq!(err.problems().len(), 1);
    assert_eq!(err.problems()[0].line, 2);
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let text = "[service.web]\nimage = \"BAD\"\nreplicas = -4\nstop_timeout = \"x\"\n\n[service.api]\nimage = \"busybox\"\nuser = \"::\"\n";
    let err = Manifest::from_str_named("m.toml", text).unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    for key in [
        "service.web.image",
        "service.web.replicas",
        "service.web.stop_timeout",
        "service.api.user",
    ] {
        assert!(keys.contains(&key), "missing {key} in {keys:?}");
    }
}

#[test]
fn a_directory_merges_and_a_duplicate_names_both_files() {
    let mut files = SourceFiles::new();
    files.insert(
        "a.toml".into(),
        "[service.web]\nimage = \"busybox\"\n".into(),
    );
    files.insert(
        "b.toml".into(),
        "[service.api]\nimage = \"busybox\"\n".into(),
    );
    let m = Manifest::from_sources(&files).unwrap();
    assert_eq!(m.services.keys().collect::<Vec<_>>(), ["api", "web"]);
    assert_eq!(m.services["api"].file, "b.toml");

    files.insert(
        "c.toml".into(),
        "\n[service.web]\nimage = \"busybox:2\"\n".into(),
    );
    let err = Manifest::from_sources(&files).unwrap_err();
    let p = &err.problems()[0];
    assert_eq!((p.file.as_str(), p.line), ("c.toml", 2));
    assert!(
        p.message.contains("a.toml") && p.message.contains("c.toml"),
        "{}",
        p.message
    );
}

#[test]
fn env_files_parse_and_refuse_bad_lines() {
    let spaced = parse_env_file("/e.env", "A=1\nB C=x\n").unwrap_err();
    assert_eq!(spaced.line, 2);
    let pairs = parse_env_file("/e.env", "# comment\nA=1\n\nB=x=y\n").unwrap();
    assert_eq!(
        pairs,
        vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
    );
    let err = parse_env_file("/e.env", "A=1\nnot a pair\n").unwrap_err();
    assert_eq!((err.line, err.file.as_str()), (2, "/e.env"));
}

#[test]
fn the_spec_example_validates() {
    let text = include_str!("../../../../manifests/full.toml");
    let m = ok(text);
    let web = &m.services["web"];
    assert_eq!(web.replicas, 3);
    assert_eq!(
        web.ports,
        vec![Port {
            container: 8080,
            host: Some(8080),
            host_ip: "0.0.0.0".parse().unwrap(),
            protocol: Protocol::Tcp,
        }]
    );
    assert_eq!(web.depends_on, vec!["api".to_string()]);
    assert_eq!(web.env["spring.profiles.active"], "prod");
    assert_eq!(web.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(web.resources.memory_bytes, Some(128 << 20));
    assert_eq!(web.volumes.len(), 1);
    assert_eq!(web.secrets[0].target, "db_password");
}

#[test]
fn ports_as_compose_writes_them() {
    let m = ok(&svc("[[service.web.ports]]\ncontainer = 80\nhost = 8080\nhost_ip = \"127.0.0.1\"\n[[service.web.ports]]\ncontainer = 53\nhost = 5353\nprotocol = \"udp\"\n[[service.web.ports]]\ncontainer = 9000"));
    let p = &m.services["web"].ports;
    assert_eq!(p.len(), 3);
    assert_eq!(p[0].host_addr(), Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(
        (p[1].protocol, p[1].host_ip.to_string().as_str()),
        (Protocol::Udp, "0.0.0.0")
    );
    assert_eq!(p[2].host, None);
    // The same host port on tcp and udp, or on two addresses, is fine.
    ok("[service.a]\nimage = \"busybox\"\nports = [{ container = 53, host = 53 }, { container = 53, host = 53, protocol = \"udp\" }]\n[service.b]\nimage = \"busybox\"\nports = [{ container = 80, host = 80, host_ip = \"127.0.0.1\" }]\n[service.c]\nimage = \"busybox\"\nports = [{ container = 80, host = 80, host_ip = \"127.0.0.2\" }]\n");
    // ... but not one address inside a wildcard bind, nor a port twice in one service.
    bad("[service.a]\nimage = \"busybox\"\nports = [{ container = 80, host = 80, host_ip = \"127.0.0.1\" }]\n[service.b]\nimage = \"busybox\"\nports = [{ container = 80, host = 80 }]\n", "service.b.ports[0].host", 4, "already published by service `a`");
    bad(
        &svc("ports = [{ container = 80, host = 80 }, { container = 81, host = 80 }]"),
        "service.web.ports[1].host",
        1,
        "already published",
    );
    for (body, key, needle) in [
        (
            "ports = [{ container = 80, host = 80, protocol = \"sctp\" }]",
            "service.web.ports[0].protocol",
            "not one of",
        ),
        (
            "ports = [{ container = 80, host = 80, host_ip = \"localhost\" }]",
            "service.web.ports[0].host_ip",
            "not an IP address",
        ),
        (
            "ports = [{ container = 80, host = 80, host_ip = \"::1\" }]",
            "service.web.ports[0].host_ip",
            "IPv6",
        ),
        (
            "ports = [{ container = 80, host_ip = \"127.0.0.1\" }]",
            "service.web.ports[0].host_ip",
            "needs a `host`",
        ),
        (
            "ports = [{ container = 0 }]",
            "service.web.ports[0].container",
            "outside 1-65535",
        ),
        (
            "ports = [{ container = 80, host = 99999 }]",
            "service.web.ports[0].host",
            "outside 1-65535",
        ),
    ] {
        bad(&svc(body), key, 3, needle);
    }
    bad(
        &svc("port = { container = 80, host = 81 }\nports = [{ container = 80 }]"),
        "service.web.ports",
        4,
        "both `port` and `ports`",
    );
}

#[test]
fn entrypoint_command_env_names_and_sysctls() {
    let m = ok(&svc("entrypoint = []\ncommand = [\"-f\"]\nenv = { \"spring.profiles.active\" = \"prod\", \"my-feature-flag\" = \"on\" }\nsysctls = { \"net.ipv4.ip_unprivileged_port_start\" = 0, \"kernel.shmmax\" = \"65536\", \"fs.mqueue.msg_max\" = \"20\" }\ninit = true"));
    let web = &m.services["web"];
    assert_eq!(web.entrypoint, Some(vec![]));
    assert_eq!(web.command, Some(vec!["-f".to_string()]));
    assert_eq!(web.env["my-feature-flag"], "on");
    assert_eq!(web.sysctls["net.ipv4.ip_unprivileged_port_start"], "0");
    assert!(web.init);
    bad(
        &svc("sysctls = { \"kernel.panic\" = \"1\" }"),
        "service.web.sysctls.kernel.panic",
        3,
        "not namespaced",
    );
    bad(
        &svc("sysctls = { \"vm.swappiness\" = \"1\" }"),
        "service.web.sysctls.vm.swappiness",
        3,
        "not namespaced",
    );
    bad(
        &svc("sysctls = { \"net..x\" = \"1\" }"),
        "service.web.sysctls.net..x",
        3,
        "not a sysctl name",
    );
    bad(
        &svc("sysctls = { \"net.core.somaxconn\" = \"\" }"),
        "service.web.sysctls.net.core.somaxconn",
        3,
        "1-256 bytes",
    );
    bad(
        &svc("entrypoint = [\"\"]"),
        "service.web.entrypoint",
        3,
        "program name is empty",
    );
    bad(
        &svc("env = { \"\" = \"x\" }"),
        "service.web.env.",
        3,
        "not a valid variable name",
    );
}

#[test]
fn capabilities_and_seccomp_as_docker_names_them() {
    let m = ok(&svc(
        "cap_add = [\"net_admin\", \"CAP_SYS_TIME\", \"NET_ADMIN\"]\ncap_drop = [\"ALL\"]\nseccomp = \"unconfined\"",
    ));
    let web = &m.services["web"];
    assert_eq!(web.cap_add, ["NET_ADMIN", "SYS_TIME"]);
    assert_eq!(web.cap_drop, ["ALL"]);
    assert_eq!(web.seccomp, SeccompProfile::Unconfined);
    let m = ok(&svc("seccomp = \"/etc/berth/seccomp.json\""));
    assert_eq!(
        m.services["web"].seccomp,
        SeccompProfile::File("/etc/berth/seccomp.json".into())
    );
    let m = ok(&svc(""));
    assert_eq!(m.services["web"].seccomp, SeccompProfile::Default);
    assert!(m.services["web"].cap_add.is_empty() && m.services["web"].cap_drop.is_empty());
    bad(
        &svc("cap_add = [\"NET_ADMN\"]"),
        "service.web.cap_add",
        3,
        "`NET_ADMN` is not a Linux capability (did you mean `NET_ADMIN`?)",
    );
    bad(
        &svc("cap_drop = [\"CHOWN\", \"frobnicate\"]"),
        "service.web.cap_drop",
        3,
        "`frobnicate` is not a Linux capability;",
    );
    bad(
        &svc("seccomp = \"unconfind\""),
        "service.web.seccomp",
        3,
        "(did you mean `unconfined`?)",
    );
    bad(
        &svc("seccomp = \"profiles/x.json\""),
        "service.web.seccomp",
        3,
        "absolute path of a JSON profile",
    );
    bad(
        &svc("seccomp = \"/etc/../x.json\""),
        "service.web.seccomp",
        3,
        "must not contain `..`",
    );
    bad(
        &svc("cap_add = \"NET_ADMIN\""),
        "service.web.cap_add",
        3,
        "",
    );
}

#[test]
fn depends_on_names_services_without_cycles() {
    let m = ok("[service.web]\nimage = \"busybox\"\ndepends_on = [\"app\", \"app\"]\n[service.app]\nimage = \"busybox\"\ndepends_on = [\"db\"]\n[service.db]\nimage = \"busybox\"\n");
    assert_eq!(m.services["web"].depends_on, vec!["app".to_string()]);
    bad(
        "[service.web]\nimage = \"busybox\"\ndepends_on = [\"nope\"]\n",
        "service.web.depends_on",
        3,
        "`nope` is not a service",
    );
    bad(
        "[service.web]\nimage = \"busybox\"\ndepends_on = [\"web\"]\n",
        "service.web.depends_on",
        3,
        "depends on itself",
    );
    let cycle = "[service.a]\nimage = \"busybox\"\ndepends_on = [\"b\"]\n[service.b]\nimage = \"busybox\"\ndepends_on = [\"c\"]\n[service.c]\nimage = \"busybox\"\ndepends_on = [\"a\"]\n";
    let err = Manifest::from_str_named("m.toml", cycle).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert!(
        err.to_string()
            .contains("dependency cycle: a -> b -> c -> a"),
        "{err}"
    );
    // Across files, the location is the file that wrote the edge.
    let mut files = SourceFiles::new();
    files.insert(
        "a.toml".into(),
        "[service.a]\nimage = \"busybox\"\ndepends_on = [\"b\"]\n".into(),
    );
    files.insert(
        "b.toml".into(),
        "[service.b]\nimage = \"busybox\"\n\ndepends_on = [\"a\"]\n".into(),
    );
    let err = Manifest::from_sources(&files).unwrap_err();
    assert!(
        err.to_string().starts_with("a.toml:3:") || err.to_string().starts_with("b.toml:4:"),
        "{err}"
    );
}

#[test]
fn a_writable_volume_has_one_writer_at_a_time() {
    let vol = "[[service.web.volumes]]\nname = \"pgdata\"\ntarget = \"/data\"";
    // Default strategy: stop-first with a single-writer volume, start-first otherwise.
    assert_eq!(
        ok(&svc(vol)).services["web"].update.strategy,
        UpdateStrategy::StopFirst
    );
    assert_eq!(
        ok(&svc("")).services["web"].update.strategy,
        UpdateStrategy::StartFirst
    );
    for other in [
        "[[service.web.volumes]]\nname = \"pgdata\"\ntarget = \"/data\"\nreadonly = true",
        "[[service.web.volumes]]\ntmpfs = \"1Mi\"\ntarget = \"/data\"",
        "[[service.web.volumes]]\nname = \"pgdata\"\ntarget = \"/data\"\nshared = true",
    ] {
        let m = ok(&svc(&format!("replicas = 2\n{other}")));
        assert_eq!(
            m.services["web"].update.strategy,
            UpdateStrategy::StartFirst,
            "{other}"
        );
    }
    bad(
        &svc(&format!("replicas = 2\n{vol}")),
        "service.web.replicas",
        3,
        "one writer at a time",
    );
    bad(
        &svc("[[service.web.volumes]]\nhost = \"/srv/db\"\ntarget = \"/data\"\n[service.web.update]\nstrategy = \"start-first\""),
        "service.web.update.strategy",
        7,
        "host path `/srv/db`",
    );
    ok(&svc(&format!(
        "replicas = 2\n{vol}\nshared = true\n[service.web.update]\nstrategy = \"start-first\""
    )));
    // Two services writing one volume are two writers too.
    let two = "[service.a]\nimage = \"busybox\"\nvolumes = [{ name = \"d\", target = \"/d\" }]\n[service.b]\nimage = \"busybox\"\nvolumes = [{ name = \"d\", target = \"/d\"READONLY }]\n";
    bad(
        &two.replace("READONLY", ""),
        "service.b.volumes[0]",
        4,
        "also mounted by a",
    );
    bad(
        &two.replace("READONLY", ""),
        "service.a.volumes[0]",
        1,
        "also mounted by b",
    );
    ok(&two
        .replace("}", ", shared = true }")
        .replace("READONLY", ""));
    ok(&two.replace("READONLY", ", readonly = true"));
}

#[test]
fn problems_come_sorted_by_line() {
    let text = "[service.b]\nimage = \"busybox\"\nreplicas = -1\n[service.a]\nimage = \"BAD\"\n";
    let err = Manifest::from_str_named("m.toml", text).unwrap_err();
    let lines: Vec<usize> = err.problems().iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![3, 5]);
}

#[test]
fn signals_parse_as_docker_parse_signal() {
    // (text, expected (name, number)); Docker's `signal.ParseSignal` with its
    // Linux map (RTMIN = 34, RTMAX = 64) is the reference.
    let cases: &[(&str, Option<(&str, i32)>)] = &[
        ("SIGINT", Some(("SIGINT", 2))),
        ("int", Some(("SIGINT", 2))),
        ("SigQuit", Some(("SIGQUIT", 3))),
        ("15", Some(("SIGTERM", 15))),
        ("SIGRTMIN", Some(("SIGRTMIN", 34))),
        ("SIGRTMIN+3", Some(("SIGRTMIN+3", 37))),
        ("rtmin+15", Some(("SIGRTMIN+15", 49))),
        ("37", Some(("SIGRTMIN+3", 37))),
        ("RTMAX", Some(("SIGRTMAX", 64))),
        ("SIGRTMAX-1", Some(("SIGRTMAX-1", 63))),
        ("0", None),
        ("32", None),
        ("65", None),
        ("SIGRTMIN+16", None),
        ("SIGRTMIN-1", None),
        ("SIGFOO", None),
        ("", None),
    ];
    for (text, want) in cases {
        let got = Signal::parse(text).map(|s| (s.name, s.number));
        let want = want.map(|(n, k)| (n.to_string(), k));
        assert_eq!(got, want, "{text:?}");
    }
}

#[test]
fn six_mistakes_of_six_kinds_in_one_run_in_line_order() {
    let text = r#"[service.web]
image = "busybox"
replicas = "three"
stop_timeout = "10 parsecs"
port = { container = 80, host = 70000 }

[service.api]
image = "busybox"
imgae = "typo"
ports = [{ container = 81, host = 8080 }]

[service.api.healthcheck]
tcp = { port = 81 }

[service.db]
image = "busybox"
ports = [{ container = 5432, host = 8080 }]
"#;
    let err = Manifest::from_str_named("m.toml", text).unwrap_err();
    let got: Vec<(usize, &str)> = err
        .problems()
        .iter()
        .map(|p| (p.line, p.key.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (3, "service.web.replicas"),
            (4, "service.web.stop_timeout"),
            (5, "service.web.port.host"),
            (9, "service.api.imgae"),
            (12, "service.api.healthcheck"),
            (15, "service.db.ports[0].host"),
        ],
        "{err}"
    );
    let text_of = |line: usize| {
        err.problems()
            .iter()
            .find(|p| p.line == line)
            .unwrap()
            .message
            .clone()
    };
    assert!(text_of(3).contains("invalid type"), "{}", text_of(3));
    assert!(
        text_of(3).ends_with("expected an integer"),
        "{}",
        text_of(3)
    );
    assert_eq!(text_of(9), "unknown key `imgae`; did you mean `image`?");
    assert_eq!(
        text_of(12),
        "unknown key `healthcheck`; did you mean `health`?"
    );
    assert!(
        text_of(15).contains("already published by service `api`"),
        "{}",
        text_of(15)
    );
}

#[test]
fn did_you_mean_only_when_close() {
    use crate::manifest::lenient::did_you_mean;
    let keys = ["image", "replicas", "restart", "resources"];
    assert_eq!(did_you_mean("imgae", &keys), Some("image"));
    assert_eq!(did_you_mean("replica", &keys), Some("replicas"));
    assert_eq!(did_you_mean("resource", &keys), Some("resources"));
    assert_eq!(did_you_mean("zzz", &keys), None);
}

#[test]
fn userns_is_auto_by_default_host_on_request_and_anything_else_is_refused() {
    let m = ok(&svc(""));
    assert_eq!(m.services["web"].userns, UsernsMode::Auto);
    let m = ok(&svc("userns = \"host\""));
    assert_eq!(m.services["web"].userns, UsernsMode::Host);
    bad(
        &svc("userns = \"hots\""),
        "service.web.userns",
        3,
        "`hots` is not \"auto\" or \"host\" (did you mean `host`?)",
    );
}

#[test]
fn fleet_table_parses_and_its_mistakes_are_located() {
    let m = ok(&format!(
        "{}[fleet]\nmax_parallel = 2\ngroups = [\"canary\", \"default\"]\nbake = \"3s\"\nauto_revert = true\n",
        svc("")
    ));
    let f = m.fleet.expect("fleet table");
    assert_eq!(f.max_parallel, Some(2));
    assert_eq!(
        f.groups.as_deref(),
        Some(&["canary".to_string(), "default".to_string()][..])
    );
    assert_eq!(f.bake, Some(Duration::from_secs(3)));
    assert_eq!(f.auto_revert, Some(true));
    assert_eq!(ok(&svc("")).fleet, None, "no [fleet]: none");
    // The service takes lines 1-3 (svc ends with a blank line), [fleet] line 4.
    let cases = [
        ("max_parallel = 0", "fleet.max_parallel", "outside 1-10000"),
        (
            "max_parallel = 10001",
            "fleet.max_parallel",
            "outside 1-10000",
        ),
        ("groups = []", "fleet.groups", "at least one group"),
        ("groups = [\"a b\"]", "fleet.groups[0]", "not a group name"),
        ("groups = [\"x\", \"x\"]", "fleet.groups[1]", "listed twice"),
        ("bake = \"25h\"", "fleet.bake", "outside"),
        ("bake = \"soon\"", "fleet.bake", ""),
        (
            "max_paralel = 1",
            "fleet.max_paralel",
            "did you mean `max_parallel`",
        ),
        ("auto_revert = \"yes\"", "fleet", "true or false"),
    ];
    for (body, key, needle) in cases {
        bad(&format!("{}[fleet]\n{body}\n", svc("")), key, 5, needle);
    }
    let two: SourceFiles = [
        (
            "a.toml".to_string(),
            format!("{}[fleet]\nmax_parallel = 1\n", svc("")),
        ),
        (
            "b.toml".to_string(),
            "[fleet]\nmax_parallel = 2\n".to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let err = Manifest::from_sources(&two).expect_err("two [fleet] tables");
    assert!(
        err.problems().iter().any(|p| p.file == "b.toml"
            && p.key == "fleet"
            && p.message.contains("both a.toml and b.toml")),
        "{err}"
    );
}
