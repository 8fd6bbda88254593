//! What the packages and the AWS template ship must be accepted by the
//! binaries they ship with: the default configs, the proxy config the
//! CloudFormation user data writes, and the systemd units' command lines.
//! (packaging/check-packages.sh installs the packages for real.)

use std::path::{Path, PathBuf};
use std::process::Command;

use coffer_agent::config::AgentConfig;
use coffer_proxy::config::{ProxyConfig, StoreConfig};
use coffer_tests::bin;
use serde::Deserialize as _;

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
    // The shipped template's key policies let writers unwrap only under the
    // chunk-id KEK, so the shipped agent config names one.
    assert!(matches!(&agent.keys, coffer_agent::config::KeysConfig::Kms(k) if k.chunk_id_key_id.is_some()));
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
        .replace("${InternalChunkIdKey.Arn}", "arn:aws:kms:eu-west-1:111122223333:key/a2")
        .replace("${ConfidentialKey.Arn}", "arn:aws:kms:eu-west-1:111122223333:key/b")
        .replace("${ConfidentialChunkIdKey.Arn}", "arn:aws:kms:eu-west-1:111122223333:key/b2")
        .replace("${RestrictedKey.Arn}", "arn:aws:kms:eu-west-1:111122223333:key/c")
        .replace("${RestrictedChunkIdKey.Arn}", "arn:aws:kms:eu-west-1:111122223333:key/c2");
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

/// CloudFormation's short forms as plain JSON: `!Ref X` becomes "ref:X",
/// `!GetAtt X.Y` "getatt:X.Y", `!Sub S` the string S with its `${…}` kept.
fn cfn_json(v: serde_yaml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    use serde_yaml::Value as Y;
    match v {
        Y::Null => J::Null,
        Y::Bool(b) => J::Bool(b),
        Y::Number(n) => serde_json::to_value(n).unwrap(),
        Y::String(s) => J::String(s),
        Y::Sequence(items) => J::Array(items.into_iter().map(cfn_json).collect()),
        Y::Mapping(m) => {
            J::Object(m.into_iter().map(|(k, v)| (k.as_str().expect("string keys").to_string(), cfn_json(v))).collect())
        }
        Y::Tagged(t) => match (t.tag.to_string().as_str(), cfn_json(t.value)) {
            ("!Ref", J::String(s)) => J::String(format!("ref:{s}")),
            ("!GetAtt", J::String(s)) => J::String(format!("getatt:{s}")),
            ("!Sub", J::String(s)) => J::String(s),
            (tag, value) => serde_json::json!({ tag: value }),
        },
    }
}

/// The template's key policies, each read by the same checks `assess`
/// runs on a live key (`coffer_proxy::compliance::keypolicy`), and then
/// principal by principal: what each role may and may not do.
#[test]
fn the_templates_key_policies_separate_every_duty() {
    use coffer_proxy::compliance::keypolicy::{covers, findings, BREAK_GLASS_ACTIONS};
    let template: serde_yaml::Value = serde_yaml::from_str(&read("packaging/aws/coffer.yaml")).unwrap();
    let template = cfn_json(template);
    let resources = template["Resources"].as_object().unwrap();
    let keys: Vec<(&String, &serde_json::Value)> =
        resources.iter().filter(|(_, r)| r["Type"] == "AWS::KMS::Key").collect();
    assert_eq!(keys.len(), 6, "a data-key and a chunk-id KEK per classification");

    let principal = |s: &serde_json::Value| s["Principal"]["AWS"].as_str().unwrap_or("*").to_string();
    for (name, key) in &keys {
        let policy = &key["Properties"]["KeyPolicy"];
        let problems = findings(&policy.to_string());
        assert!(problems.is_empty(), "{name}: {problems:#?}");
        let statements = policy["Statement"].as_array().unwrap();
        let allowed = |who: &str, action: &str| {
            statements
                .iter()
                .filter(|s| s["Effect"] == "Allow" && principal(s) == who && covers(s, action))
                .collect::<Vec<_>>()
        };
        let chunk_id_key = name.contains("ChunkId");
        let purpose = if chunk_id_key { "chunk-id" } else { "data" };

        // Writers wrap only for their own repositories and purpose, and
        // unwrap nothing but chunk-id keys under the chunk-id KEK.
        let writer = "ref:WriterRoleArn";
        for s in allowed(writer, "kms:GenerateDataKey") {
            assert_eq!(s["Condition"]["StringEquals"]["kms:EncryptionContext:coffer:purpose"], purpose, "{name}");
            assert_eq!(s["Condition"]["StringLike"]["kms:EncryptionContext:coffer:repo"], "${WriterRepoPrefix}*");
        }
        let writer_decrypts = allowed(writer, "kms:Decrypt");
        if chunk_id_key {
            assert_eq!(writer_decrypts.len(), 1, "{name}");
            assert_eq!(
                writer_decrypts[0]["Condition"]["StringEquals"]["kms:EncryptionContext:coffer:purpose"],
                "chunk-id"
            );
        } else {
            assert!(writer_decrypts.is_empty(), "{name}: writers must never unwrap data keys");
        }
        // The proxy proves records on the same key and never unwraps,
        // wraps, or changes the key.
        let proxy = "getatt:ProxyRole.Arn";
        for action in ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:CreateGrant", "kms:PutKeyPolicy"] {
            assert!(allowed(proxy, action).is_empty(), "{name}: the proxy may {action}");
        }
        for s in allowed(proxy, "kms:ReEncryptTo") {
            assert_eq!(s["Condition"]["Bool"]["kms:ReEncryptOnSameKey"], "true", "{name}");
            assert_eq!(s["Condition"]["StringEquals"]["kms:EncryptionContext:coffer:purpose"], purpose, "{name}");
        }
        // Administrators manage but never use, delete, disable or re-grant.
        let admin = "ref:KeyAdminRoleArn";
        for action in BREAK_GLASS_ACTIONS.iter().chain(&["kms:Decrypt", "kms:GenerateDataKey", "kms:ReEncryptTo"]) {
            assert!(allowed(admin, action).is_empty(), "{name}: administrators may {action}");
        }
        assert!(!allowed(admin, "kms:DescribeKey").is_empty(), "{name}");
        // Restorers unwrap and never wrap; only the break-glass role may
        // do the irreversible things.
        assert!(allowed("ref:RestoreRoleArn", "kms:GenerateDataKey").is_empty(), "{name}");
        assert!(!allowed("ref:RestoreRoleArn", "kms:Decrypt").is_empty(), "{name}");
        for action in BREAK_GLASS_ACTIONS {
            assert!(!allowed("ref:BreakGlassRoleArn", action).is_empty(), "{name}: nobody may {action}");
        }
    }

    // Every break-glass action on every key raises the alarm.
    let alarm = &resources["KeyChangeAlarm"]["Properties"]["EventPattern"]["detail"];
    for action in BREAK_GLASS_ACTIONS {
        let event = action.strip_prefix("kms:").unwrap();
        assert!(alarm["eventName"].as_array().unwrap().iter().any(|e| e == event), "{event} raises no alarm");
    }
    for (name, _) in &keys {
        let arn = format!("getatt:{name}.Arn");
        assert!(alarm["resources"]["ARN"].as_array().unwrap().iter().any(|a| *a == arn), "{name} has no alarm");
    }
    // The proxy's own IAM policy also re-encrypts only on the same key.
    let proxy_keys = &resources["ProxyKeyPolicy"]["Properties"]["PolicyDocument"]["Statement"];
    for s in proxy_keys.as_array().unwrap() {
        if covers(s, "kms:ReEncryptFrom") {
            assert_eq!(s["Condition"]["Bool"]["kms:ReEncryptOnSameKey"], "true");
        }
        assert!(!covers(s, "kms:Decrypt") && !covers(s, "kms:GenerateDataKey"));
    }
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
    assert!(matches!(&config.keys, coffer_agent::config::KeysConfig::Kms(k) if k.chunk_id_key_id.is_some()));

    // Cloud credentials reach the agent's container and no other: its own
    // service account, no API token, and the role's token skipped for every
    // other container.
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&manifest)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .collect();
    let account = docs.iter().find(|d| d["kind"] == "ServiceAccount").expect("a service account of its own");
    assert!(account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].is_string());
    assert_eq!(account["automountServiceAccountToken"], false);
    let set = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let pod = &set["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], account["metadata"]["name"]);
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    let skipped = pod["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"].as_str().unwrap_or("");
    let skipped: Vec<&str> = skipped.split(',').collect();
    for c in pod["spec"]["containers"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        assert_eq!(skipped.contains(&name), name != "coffer", "{name}: only the agent holds cloud credentials");
    }
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

/// The series names a text exposition can carry: each `# TYPE` line's family
/// with the suffixes its type adds.
fn exported_series(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (family, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_count", "_sum"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
    }
    names
}

/// Each sample's series name and the names of its labels.
fn series_labels(exposition: &str) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut labels = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else { continue };
        let set = labels.entry(name.to_string()).or_default();
        let inside = &rest[..rest.rfind('}').unwrap()];
        set.extend(inside.split(',').filter_map(|pair| pair.split_once('=')).map(|(k, _)| k.to_string()));
    }
    labels
}

#[test]
fn every_metric_the_shipped_rules_and_dashboard_query_is_exported() {
    let (proxy, agent) =
        (coffer_proxy::monitor::metrics::every_family(), coffer_agent::daemon::metrics::every_family());
    let mut exported = exported_series(&proxy);
    exported.extend(exported_series(&agent));
    let mut labels = series_labels(&proxy);
    labels.extend(series_labels(&agent));
    for name in ["coffer_requests_total", "coffer_store_seconds_bucket", "coffer_agent_socket_sends_total"] {
        assert!(exported.contains(name), "{name} in {exported:?}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/monitoring");
    for file in ["coffer-rules.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut queried = std::collections::BTreeSet::new();
        for (at, _) in text.match_indices("coffer_") {
            if text[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = text[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            assert!(
                exported.contains(&name),
                "{file} queries {name}, which neither coffer-proxy nor the daemon exports"
            );
            // The labels a selector names are the series' own.
            if let Some(selector) = text[at + name.len()..].strip_prefix('{') {
                let selector = &selector[..selector.find('}').unwrap()];
                for label in selector.split(',').map(|m| m.split(['=', '!']).next().unwrap().trim()) {
                    let known = labels.get(&name).is_some_and(|l| l.contains(label));
                    assert!(known, "{file}: {name} has no label {label:?} (it has {:?})", labels.get(&name));
                }
            }
            queried.insert(name);
        }
        assert!(queried.len() >= 15, "{file} queries only {queried:?}");
    }
}

/// Every alert kind the proxy raises, as a string literal in its source.
fn raised_alert_kinds() -> std::collections::BTreeSet<String> {
    let mut kinds = std::collections::BTreeSet::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices(".raise(") {
                let rest = text[at + 7..].trim_start();
                if let Some(literal) = rest.strip_prefix('"') {
                    kinds.insert(literal[..literal.find('"').unwrap()].to_string());
                }
            }
        }
    }
    kinds
}

#[test]
fn every_alert_kind_is_exported_at_zero_from_the_start() {
    let raised = raised_alert_kinds();
    assert!(raised.len() >= 15 && raised.contains("scrub"), "{raised:?}");
    // The detector's kinds are chosen at run time, from its own table.
    let mut expected = raised.clone();
    expected.extend(["ransomware".to_string(), "anomalous-snapshot".to_string()]);
    let listed: std::collections::BTreeSet<String> =
        coffer_proxy::monitor::metrics::ALERT_KINDS.iter().map(|k| k.to_string()).collect();
    assert_eq!(listed, expected, "ALERT_KINDS and the kinds the proxy raises");
    let text = coffer_proxy::monitor::metrics::Metrics::default().encode();
    for kind in &listed {
        let zero = format!("coffer_alerts_total{{kind=\"{kind}\"}} 0");
        assert!(text.lines().any(|l| l == zero), "{zero} in:\n{text}");
    }
    assert!(text.contains("coffer_lifecycle_passes_total{kind=\"failed\"} 0"), "{text}");
    let docs = read("docs/configuration.md");
    for kind in &listed {
        assert!(docs.contains(&format!("`{kind}`")), "docs/configuration.md names no alert kind {kind}");
    }
}
