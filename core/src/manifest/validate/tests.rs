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
        "env = { \"1BAD\" = \"x\" }",
        "env.1BAD",
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
    assert_eq!(s.stop_signal.name, "SIGTERM");
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
    let text = "[service.a]\nimage = \"busybox\"\nport = { container = 80, host = 8080 }\n\n[service.b]\nimage = \"busybox\"\nport = { container = 81, host = 8080 }\n";
    bad(
        text,
        "service.b.port.host",
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
    assert!(
        p.message.contains("unknown field `replica`"),
        "{}",
        p.message
    );
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
        web.port,
        Some(Port {
            container: 8080,
            host: 8080
        })
    );
    assert_eq!(web.resources.memory_bytes, Some(128 << 20));
    assert_eq!(web.volumes.len(), 1);
    assert_eq!(web.secrets[0].target, "db_password");
}
