//! The seccomp profiles shipped for runc and crun containers (packaging/seccomp/): Docker's default
//! profile with sysinfo and sched_getaffinity handed to `vproc seccomp-agent` (`SCMP_ACT_NOTIFY`,
//! `listenerPath`). Written by `vproc seccomp-profile`, so an operator can make one for another socket.

use serde_json::{Value, json};

use crate::launcher::seccomp::DOCKER_DEFAULT;

/// The calls the agent answers, by their names in profiles.
const NOTIFIED: [&str; 2] = ["sched_getaffinity", "sysinfo"];

/// Which format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Docker's format, with its capability and architecture conditions (podman, Docker, CRI-O:
    /// `--security-opt seccomp=FILE`).
    Docker,
    /// The OCI runtime spec's `linux.seccomp`, decided for x86_64 and the default capabilities (a
    /// Kubernetes `Localhost` profile, which containerd reads in this format and CRI-O accepts).
    Kubernetes,
}

/// The profile, pretty-printed, with `listener` as its `listenerPath`.
pub fn profile(format: Format, listener: &str) -> String {
    let mut profile: Value =
        serde_json::from_str(DOCKER_DEFAULT).expect("Docker's default profile is JSON");
    let mut syscalls: Vec<Value> = profile["syscalls"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    // The notified calls leave the allowlist: one rule per call, or runc's libseccomp refuses the
    // second action.
    for rule in &mut syscalls {
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|name| !NOTIFIED.iter().any(|n| name == n));
        }
    }
    syscalls.retain(|rule| rule["names"].as_array().is_some_and(|n| !n.is_empty()));
    if format == Format::Kubernetes {
        syscalls.retain(applies_by_default);
        for rule in &mut syscalls {
            if let Some(rule) = rule.as_object_mut() {
                rule.remove("includes");
                rule.remove("excludes");
                rule.remove("comment");
            }
        }
    }
    syscalls.push(json!({
        "names": NOTIFIED,
        "action": "SCMP_ACT_NOTIFY",
        "comment": "answered for the container by vproc seccomp-agent (its memory, swap, uptime, load and CPU count)",
    }));
    let object = profile.as_object_mut().expect("an object");
    if format == Format::Kubernetes {
        object.remove("archMap");
        object.insert(
            "architectures".into(),
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        );
    }
    object.insert("syscalls".into(), Value::Array(syscalls));
    object.insert("listenerPath".into(), Value::String(listener.into()));
    let mut text = serde_json::to_string_pretty(&profile).expect("JSON");
    text.push('\n');
    text
}

/// Whether a rule of Docker's default profile applies on x86_64 to a container with Docker's default
/// capabilities (every kernel a vproc node runs is newer than the profile's `minKernel`s).
fn applies_by_default(rule: &Value) -> bool {
    let capabilities = default_capability_names();
    let has_cap = |cap: &Value| capabilities.iter().any(|c| cap == c);
    let is_x86_64 = |arch: &Value| arch == "amd64";
    let list = |value: &Value| value.as_array().cloned().unwrap_or_default();
    let includes = &rule["includes"];
    let excludes = &rule["excludes"];
    let arches_in = list(&includes["arches"]);
    list(&includes["caps"]).iter().all(has_cap)
        && (arches_in.is_empty() || arches_in.iter().any(is_x86_64))
        && !list(&excludes["caps"]).iter().any(has_cap)
        && !list(&excludes["arches"]).iter().any(is_x86_64)
}

/// Docker's default capabilities by name.
fn default_capability_names() -> Vec<&'static str> {
    let bits = crate::launcher::process::DEFAULT_CAPABILITIES.bits();
    (0..64)
        .filter(|cap| bits & (1 << cap) != 0)
        .filter_map(crate::launcher::seccomp::capability_name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::seccomp::profile::{RET_ALLOW, Target, parse};

    #[test]
    fn the_shipped_profiles_are_what_vproc_writes() {
        let socket = super::super::agent::DEFAULT_SOCKET;
        assert_eq!(
            include_str!("../../packaging/seccomp/vproc-docker.json"),
            profile(Format::Docker, socket),
            "regenerate with: vproc seccomp-profile --format docker > packaging/seccomp/vproc-docker.json"
        );
        assert_eq!(
            include_str!("../../packaging/seccomp/vproc-kubernetes.json"),
            profile(Format::Kubernetes, socket),
            "regenerate with: vproc seccomp-profile --format kubernetes > packaging/seccomp/vproc-kubernetes.json"
        );
    }

    #[test]
    fn both_formats_notify_the_two_calls_and_decide_the_rest_as_docker_s_default() {
        let capabilities: Vec<String> = default_capability_names()
            .into_iter()
            .map(String::from)
            .collect();
        let target = Target {
            capabilities: &capabilities,
            kernel: (6, 1),
        };
        let docker = parse(DOCKER_DEFAULT.as_bytes(), &target).unwrap();
        for format in [Format::Docker, Format::Kubernetes] {
            let text = profile(format, "/run/x.sock");
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["listenerPath"], "/run/x.sock");
            let notify_rules: Vec<&Value> = value["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|rule| {
                    rule["names"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|n| NOTIFIED.iter().any(|m| n == m))
                })
                .collect();
            assert_eq!(notify_rules.len(), 1, "{format:?}");
            assert_eq!(notify_rules[0]["action"], "SCMP_ACT_NOTIFY");
            // Every other call is decided as in Docker's default profile.
            let ours = parse(text.as_bytes(), &target).unwrap();
            for (number, rules) in &docker.rules {
                let name = syscalls::x86_64::Sysno::new(*number as usize)
                    .unwrap()
                    .name();
                if NOTIFIED.contains(&name) {
                    assert_eq!(rules[0].action, RET_ALLOW);
                    continue;
                }
                assert_eq!(ours.rules.get(number), Some(rules), "{format:?} {name}");
            }
        }
    }
}
