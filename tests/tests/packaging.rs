//! What the packages and the AWS template ship must be accepted by the
//! binaries they ship with: the default configs, the proxy config the
//! CloudFormation user data writes, and the systemd units' command lines.
//! (packaging/check-packages.sh installs the packages for real.)

use std::path::{Path, PathBuf};
use std::process::Command;

use coffer_agent::config::AgentConfig;
use coffer_proxy::config::{ProxyConfig, StoreConfig};
use coffer_tests::bin;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_default_configs_parse() {
    let agent = AgentConfig::parse(&read("packaging/config/agent.toml"), Path::new("/etc/coffer"))
        .unwrap_or_else(|e| panic!("agent.toml: {e:?}"));
    assert!(agent.daemon.health.is_some_and(|a| a.ip().is_loopback()));
    let proxy = ProxyConfig::parse(&read("packaging/config/proxy.toml"), Path::new("/etc/coffer")).unwrap();
    assert!(proxy.audit.path.starts_with("/var/lib/coffer-proxy"), "state lives in the unit's StateDirectory");
}

/// The proxy config inside the template's user data, with CloudFormation's
/// substitutions filled in as a stack would.
#[test]
fn the_cloudformation_user_data_writes_a_valid_s3_and_kms_proxy_config() {
    let template = read("packaging/aws/coffer.yaml");
    let start = template.find("cat >/etc/coffer/proxy.toml <<EOF\n").expect("the heredoc") + 34;
    let body = &template[start..];
    let body = &body[..body.find("\n              EOF\n").expect("its end")];
    let text: String = body
        .lines()
        .map(|l| l.strip_prefix("              ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("$(cat /etc/machine-id)", "0123456789abcdef")
        .replace("${ProxyPort}", "7443")
        .replace("${BackupBucket}", "acme-coffer")
        .replace("${AWS::Region}", "eu-west-1")
        .replace("${AWS::URLSuffix}", "amazonaws.com")
        .replace("${KmsHost}", "vpce-0abc-1234.kms.eu-west-1.vpce.amazonaws.com")
        .replace("${InternalKey.Arn}", "arn:aws:kms:eu-west-1:111122223333:key/a")
        .replace("${ConfidentialKey.Arn}", "arn:aws:kms:eu-west-1:111122223333:key/b")
        .replace("${RestrictedKey.Arn}", "arn:aws:kms:eu-west-1:111122223333:key/c");
    assert!(!text.contains("${"), "an unsubstituted placeholder: {text}");
    let config = ProxyConfig::parse(&text, Path::new("/etc/coffer")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(matches!(config.store, StoreConfig::S3(_)), "{text}");
    assert!(text.contains("require_private_endpoints = true"));
    match &config.store {
        StoreConfig::S3(s3) => assert_eq!(s3.delete_profile.as_deref(), Some("coffer-lifecycle"), "deletes apart"),
        _ => unreachable!(),
    }
    assert!(template.contains("[profile coffer-lifecycle]\n              role_arn = ${LifecycleRole.Arn}"));
}

/// Each unit's ExecStart, with `--help` added, is accepted by the binary.
#[test]
fn the_units_command_lines_are_accepted() {
    let units = ["coffer-agent.service", "coffer-backup@.service", "coffer-proxy.service"];
    for unit in units {
        let text = read(&format!("packaging/systemd/{unit}"));
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart");
        let mut words = exec.split_whitespace().map(|w| w.replace("%i", "app-db"));
        let program = words.next().unwrap();
        let name = Path::new(&program).file_name().unwrap().to_str().unwrap().to_string();
        let out = Command::new(bin(&name)).args(words).arg("--help").output().unwrap();
        assert!(out.status.success(), "{unit}: {exec}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("NoNewPrivileges=yes") && text.contains("ProtectSystem=strict"), "{unit}");
        assert!(text.contains("CapabilityBoundingSet=\n"), "{unit}: no capabilities");
    }
}

/// The agent config in the Kubernetes example's ConfigMap.
#[test]
fn the_kubernetes_example_configures_a_valid_sidecar() {
    let manifest = read("packaging/kubernetes/postgres-with-coffer.yaml");
    let text: String = manifest
        .lines()
        .skip_while(|l| *l != "  agent.toml: |")
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let config = AgentConfig::parse(&text, Path::new("/etc/coffer")).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    assert_eq!(config.daemon.socket.as_deref(), Some(Path::new("/run/coffer/coffer.sock")));
    assert_eq!(config.daemon.socket_repos.len(), 1);
    assert!(manifest.contains("coffer send --repo prod/app-db"), "the example streams into the socket's repository");
}

/// Both binaries print shell completions and a manual page that know their
/// commands (what an operator installs beside the packages).
#[test]
fn completions_and_manual_pages_name_the_commands() {
    for (name, command) in [("coffer", "backup"), ("coffer-proxy", "lifecycle")] {
        let run = |args: &[&str]| {
            let out = Command::new(bin(name)).args(args).output().unwrap();
            assert!(out.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let bash = run(&["completions", "bash"]);
        assert!(
            bash.contains(&format!("complete -F _{}", name.replace('-', "__"))) && bash.contains(command),
            "{name}"
        );
        let zsh = run(&["completions", "zsh"]);
        assert!(zsh.starts_with(&format!("#compdef {name}")), "{name}: {}", &zsh[..zsh.len().min(80)]);
        let man = run(&["man"]);
        assert!(man.contains(".TH") && man.contains(command), "{name}");
        let refused = Command::new(bin(name)).args(["completions", "tcsh"]).output().unwrap();
        assert_eq!(refused.status.code(), Some(64), "an unknown shell is a usage error");
    }
}
