//! Reads a KMS key policy the way an attacker would: who can make data keys
//! for any repository, who can move a wrapped key to where writers may
//! decrypt it, and who can delete the key or give themselves rights without
//! the break-glass role. `coffer-proxy assess` runs these checks on every
//! KEK in use (with `kms:GetKeyPolicy`), and the packaging tests run them on
//! the CloudFormation template's policies, so the template and the check
//! cannot drift apart. docs/aws.md ("KMS keys") explains each rule.

use serde_json::Value;

/// A rule a key policy breaks: what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub problem: String,
    pub fix: String,
}

/// The condition key that binds a data key to its repository.
pub const REPO_CONTEXT: &str = "kms:EncryptionContext:coffer:repo";
/// The condition key that says what a wrapped key is for.
pub const PURPOSE_CONTEXT: &str = "kms:EncryptionContext:coffer:purpose";
/// Only the break-glass role may do these; everyone else is denied. Each
/// either destroys every backup under the key, lets the caller give itself
/// `Decrypt` (a policy, a grant, a replica with a policy of its choosing),
/// or moves an alias the agents name to another key.
pub const BREAK_GLASS_ACTIONS: [&str; 9] = [
    "kms:ScheduleKeyDeletion",
    "kms:DisableKey",
    "kms:PutKeyPolicy",
    "kms:CreateGrant",
    "kms:ReplicateKey",
    "kms:DeleteImportedKeyMaterial",
    "kms:UpdatePrimaryRegion",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
];

/// The actions that make a wrapped key for a repository: each must be
/// bound to the caller's repositories.
const WRAPPING_ACTIONS: [&str; 3] = ["kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:Encrypt"];

/// One statement of a policy, with the lists normalised.
struct Statement<'a> {
    sid: String,
    allow: bool,
    raw: &'a Value,
}

fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        Value::Bool(true) => vec!["true"],
        Value::Bool(false) => vec!["false"],
        _ => Vec::new(),
    }
}

/// IAM's action globbing: `*` for any run of characters, case-insensitive.
fn glob(pattern: &str, action: &str) -> bool {
    fn go(p: &[u8], a: &[u8]) -> bool {
        match p.split_first() {
            None => a.is_empty(),
            Some((b'*', rest)) => (0..=a.len()).any(|i| go(rest, &a[i..])),
            Some((c, rest)) => a.first().is_some_and(|x| x.eq_ignore_ascii_case(c)) && go(rest, &a[1..]),
        }
    }
    go(pattern.as_bytes(), action.as_bytes())
}

/// Whether a policy statement names `action` (through `Action` globs, or by
/// leaving it out of `NotAction`).
pub fn covers(statement: &Value, action: &str) -> bool {
    if let Some(not) = statement.get("NotAction") {
        return !strings(not).iter().any(|p| glob(p, action));
    }
    strings(&statement["Action"]).iter().any(|p| glob(p, action))
}

impl<'a> Statement<'a> {
    fn all(policy: &'a Value) -> Vec<Statement<'a>> {
        let list: Vec<&Value> = match &policy["Statement"] {
            Value::Array(a) => a.iter().collect(),
            s @ Value::Object(_) => vec![s],
            _ => Vec::new(),
        };
        list.into_iter()
            .enumerate()
            .map(|(i, raw)| Statement {
                sid: raw["Sid"].as_str().map(str::to_string).unwrap_or_else(|| format!("#{}", i + 1)),
                allow: raw["Effect"] == "Allow",
                raw,
            })
            .collect()
    }

    fn covers(&self, action: &str) -> bool {
        covers(self.raw, action)
    }

    /// The values a condition gives `key` under any operator, with the
    /// operator's name; condition keys are case-insensitive.
    fn condition(&self, key: &str) -> Vec<(String, Vec<String>)> {
        let Some(ops) = self.raw["Condition"].as_object() else { return Vec::new() };
        ops.iter()
            .filter_map(|(op, body)| {
                let (_, v) = body.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(key))?;
                Some((op.clone(), strings(v).into_iter().map(str::to_string).collect()))
            })
            .collect()
    }

    fn condition_keys(&self) -> Vec<String> {
        let Some(ops) = self.raw["Condition"].as_object() else { return Vec::new() };
        ops.values().filter_map(Value::as_object).flat_map(|b| b.keys().cloned()).collect()
    }

    /// Whether a positive string condition limits `key` to values each of
    /// which names something: not empty, and not made of wildcards and
    /// slashes only (`*`, `**`, `*/*`, `?*`).
    fn limits(&self, key: &str) -> bool {
        self.condition(key).iter().any(|(op, values)| {
            let positive = matches!(op.as_str(), "StringEquals" | "StringLike" | "StringEqualsIgnoreCase");
            let names = |v: &String| v.chars().any(|c| !matches!(c, '*' | '?' | '/'));
            positive && !values.is_empty() && values.iter().all(names)
        })
    }

    /// The purposes a condition allows, or `None` when any purpose goes.
    fn purposes(&self) -> Option<Vec<String>> {
        self.condition(PURPOSE_CONTEXT)
            .into_iter()
            .find(|(op, _)| matches!(op.as_str(), "StringEquals" | "StringLike"))
            .map(|(_, values)| values)
    }

    fn everyone(&self) -> bool {
        let p = &self.raw["Principal"];
        *p == "*" || strings(&p["AWS"]).contains(&"*")
    }

    /// Principals that let others in: everyone, an account (whose IAM
    /// policies may then grant the right to anyone in it), or everyone
    /// but a few (`NotPrincipal`).
    fn opens_to_others(&self) -> Option<String> {
        if self.raw.get("NotPrincipal").is_some() {
            return Some("every principal but those it names (NotPrincipal)".into());
        }
        if self.everyone() {
            return Some("every principal".into());
        }
        strings(&self.raw["Principal"]["AWS"])
            .into_iter()
            .find(|p| p.ends_with(":root") || (p.len() == 12 && p.bytes().all(|b| b.is_ascii_digit())))
            .map(|p| format!("the account {p}, so any IAM policy in it may grant it,"))
    }
}

/// The rules a key policy (JSON text) breaks; none for a sound one.
pub fn findings(policy: &str) -> Vec<Problem> {
    let Ok(doc) = serde_json::from_str::<Value>(policy) else {
        return vec![finding("the key policy is not JSON", "read it with aws kms get-key-policy")];
    };
    let statements = Statement::all(&doc);
    let allows: Vec<&Statement> = statements.iter().filter(|s| s.allow).collect();
    let mut out = Vec::new();

    // Unwrapping: never open to everyone, to an account at large, or to
    // all but a few; an Allow by NotAction is read as the actions it lets.
    for s in allows.iter().filter(|s| s.covers("kms:Decrypt")) {
        if let Some(who) = s.opens_to_others() {
            out.push(finding(
                format!("statement {} lets {who} decrypt", s.sid),
                "name the restore role (and, with a chunk-id condition, the writer roles) as principals; \
                 never `*`, an account root, or NotPrincipal",
            ));
        }
    }
    for s in allows.iter().filter(|s| WRAPPING_ACTIONS.iter().any(|a| s.covers(a))) {
        if !s.limits(REPO_CONTEXT) {
            out.push(finding(
                format!(
                    "statement {} lets its principals make data keys for any repository (no {REPO_CONTEXT} condition)",
                    s.sid
                ),
                "limit kms:GenerateDataKey to each host group's repositories with a StringLike condition on \
                 kms:EncryptionContext:coffer:repo (docs/aws.md)",
            ));
        }
    }
    for s in allows.iter().filter(|s| s.covers("kms:ReEncryptFrom") || s.covers("kms:ReEncryptTo")) {
        let same_key = s.condition("kms:ReEncryptOnSameKey").iter().any(|(op, values)| {
            op == "Bool" && !values.is_empty() && values.iter().all(|v| v.eq_ignore_ascii_case("true"))
        });
        if !same_key {
            out.push(finding(
                format!(
                    "statement {} lets its principals re-encrypt to or from other keys: a key wrapped under \
                     one KEK can be moved under another that more principals may decrypt",
                    s.sid
                ),
                "allow kms:ReEncrypt* only with the condition Bool kms:ReEncryptOnSameKey = true",
            ));
        }
    }
    // A KEK that writers may decrypt (chunk-id keys only) must wrap nothing
    // else: a principal allowed to re-encrypt under it (the proxy) could
    // relabel a data key as a chunk-id key, whatever conditions say.
    let writers_decrypt = allows.iter().find(|s| {
        s.covers("kms:Decrypt") && s.purposes().is_some_and(|p| !p.is_empty() && p.iter().all(|v| v == "chunk-id"))
    });
    if let Some(w) = writers_decrypt {
        let wraps_data = allows.iter().any(|s| {
            WRAPPING_ACTIONS.iter().any(|a| s.covers(a))
                && s.purposes().is_none_or(|p| p.iter().any(|v| v != "chunk-id"))
        });
        if wraps_data {
            out.push(finding(
                format!(
                    "statement {} lets writers decrypt chunk-id keys under a KEK that also wraps data keys: \
                     a data key re-encrypted with purpose chunk-id becomes readable by every writer",
                    w.sid
                ),
                "wrap chunk-id keys under a KEK of their own (keys.chunk_id_key_id on the agents, docs/aws.md)",
            ));
        }
    }
    // The break-glass actions: denied, on the key itself, to every
    // principal but at most one role named exactly (no wildcard).
    for action in BREAK_GLASS_ACTIONS {
        let denied = statements.iter().any(|s| {
            let exempt = s.condition("aws:PrincipalArn");
            !s.allow
                && s.everyone()
                && s.covers(action)
                && strings(&s.raw["Resource"]) == ["*"]
                && s.condition_keys().iter().all(|k| k.eq_ignore_ascii_case("aws:PrincipalArn"))
                && exempt.iter().all(|(op, values)| {
                    matches!(op.as_str(), "ArnNotEquals" | "ArnNotLike")
                        && values.len() == 1
                        && !values[0].contains(['*', '?'])
                })
        });
        if !denied {
            out.push(finding(
                format!("nothing in the key policy denies {action} to all but a break-glass role"),
                "deny the key's deletion, disabling, policy and grant changes to every principal except \
                 the break-glass role (docs/aws.md)",
            ));
        }
    }
    out
}

fn finding(problem: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem { problem: problem.into(), fix: fix.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape the template shipped before: one KEK for both purposes,
    /// writers minting keys for any repository, the proxy re-encrypting
    /// freely, administrators holding every management right.
    const OLD: &str = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"AdministratorsManageButNeverUse","Effect":"Allow","Principal":{"AWS":["arn:aws:iam::1:root","arn:aws:iam::1:role/admin"]},
       "Action":["kms:Create*","kms:Put*","kms:Disable*","kms:ScheduleKeyDeletion"],"Resource":"*"},
      {"Sid":"WritersWrapDataKeys","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::1:role/writer"},
       "Action":["kms:GenerateDataKey","kms:DescribeKey"],"Resource":"*"},
      {"Sid":"WritersReadOnlyTheChunkIdKey","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::1:role/writer"},
       "Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:coffer:purpose":"chunk-id"}}},
      {"Sid":"TheProxyChecksButNeverDecrypts","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::1:role/proxy"},
       "Action":["kms:DescribeKey","kms:ReEncryptFrom","kms:ReEncryptTo"],"Resource":"*"}]}"#;

    fn problems(policy: &str) -> Vec<String> {
        findings(policy).into_iter().map(|f| f.problem).collect()
    }

    #[test]
    fn the_old_template_policy_has_every_finding() {
        let p = problems(OLD);
        assert!(p.iter().any(|f| f.contains("WritersWrapDataKeys") && f.contains("any repository")), "{p:?}");
        assert!(p.iter().any(|f| f.contains("TheProxyChecksButNeverDecrypts") && f.contains("re-encrypt")), "{p:?}");
        assert!(p.iter().any(|f| f.contains("WritersReadOnlyTheChunkIdKey") && f.contains("also wraps")), "{p:?}");
        for action in BREAK_GLASS_ACTIONS {
            assert!(p.iter().any(|f| f.contains(action)), "{action}: {p:?}");
        }
    }

    #[test]
    fn conditions_that_close_each_hole_clear_its_finding() {
        let fixed = r#"{"Statement":[
          {"Sid":"Wrap","Effect":"Allow","Principal":{"AWS":"w"},"Action":"kms:GenerateDataKey*","Resource":"*",
           "Condition":{"StringLike":{"kms:EncryptionContext:coffer:repo":"prod/*"},
                        "StringEquals":{"kms:EncryptionContext:coffer:purpose":"chunk-id"}}},
          {"Sid":"Read","Effect":"Allow","Principal":{"AWS":"w"},"Action":"kms:Decrypt","Resource":"*",
           "Condition":{"StringEquals":{"kms:EncryptionContext:coffer:purpose":"chunk-id"}}},
          {"Sid":"Check","Effect":"Allow","Principal":{"AWS":"p"},"Action":"kms:ReEncrypt*","Resource":"*",
           "Condition":{"Bool":{"kms:ReEncryptOnSameKey":"true"}}},
          {"Sid":"BreakGlass","Effect":"Deny","Principal":"*","Action":["kms:ScheduleKeyDeletion","kms:Disable*",
           "kms:PutKeyPolicy","kms:CreateGrant","kms:ReplicateKey","kms:DeleteImportedKeyMaterial",
           "kms:UpdatePrimaryRegion","kms:UpdateAlias","kms:DeleteAlias"],"Resource":"*",
           "Condition":{"ArnNotEquals":{"aws:PrincipalArn":"arn:aws:iam::1:role/glass"}}}]}"#;
        assert_eq!(problems(fixed), Vec::<String>::new());

        // Each weakening brings its finding back.
        let any_repo = fixed.replace(r#""prod/*""#, r#""*""#);
        assert!(problems(&any_repo).iter().any(|f| f.contains("any repository")));
        let across = fixed.replace(r#""kms:ReEncryptOnSameKey":"true""#, r#""kms:ReEncryptOnSameKey":"false""#);
        assert!(problems(&across).iter().any(|f| f.contains("re-encrypt to or from")));
        let data_too = fixed.replace(
            r#""StringLike":{"kms:EncryptionContext:coffer:repo":"prod/*"},
                        "StringEquals":{"kms:EncryptionContext:coffer:purpose":"chunk-id"}"#,
            r#""StringLike":{"kms:EncryptionContext:coffer:repo":"prod/*"}"#,
        );
        assert!(problems(&data_too).iter().any(|f| f.contains("also wraps data keys")), "{data_too}");
        // A deny that also needs another condition (a source address) does
        // not hold against an administrator elsewhere.
        let narrow = fixed.replace(
            r#""ArnNotEquals":{"aws:PrincipalArn":"arn:aws:iam::1:role/glass"}"#,
            r#""ArnNotEquals":{"aws:PrincipalArn":"arn:aws:iam::1:role/glass"},"IpAddress":{"aws:SourceIp":"10.0.0.0/8"}"#,
        );
        assert!(problems(&narrow).iter().any(|f| f.contains("kms:ScheduleKeyDeletion")));
        let some_principals =
            fixed.replace(r#""Effect":"Deny","Principal":"*""#, r#""Effect":"Deny","Principal":{"AWS":"a"}"#);
        assert!(problems(&some_principals).iter().any(|f| f.contains("kms:PutKeyPolicy")));
        // An exemption by wildcard denies nobody who matters.
        let wild = fixed.replace("arn:aws:iam::1:role/glass", "arn:aws:iam::*:role/*");
        assert!(problems(&wild).iter().any(|f| f.contains("kms:CreateGrant")), "{wild}");
        // Repository wildcards that name nothing, and an empty same-key condition.
        for any in [r#""**""#, r#""*/*""#, r#""?*""#] {
            let loose = fixed.replace(r#""prod/*""#, any);
            assert!(problems(&loose).iter().any(|f| f.contains("any repository")), "{any}");
        }
        let empty = fixed.replace(r#""kms:ReEncryptOnSameKey":"true""#, r#""kms:ReEncryptOnSameKey":[]"#);
        assert!(problems(&empty).iter().any(|f| f.contains("re-encrypt to or from")));
        // Decrypt opened to everyone, to an account, or by NotPrincipal.
        let read = r#""Sid":"Read","Effect":"Allow","Principal":{"AWS":"w"}"#;
        for to in [
            r#""Sid":"Read","Effect":"Allow","Principal":"*""#,
            r#""Sid":"Read","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"}"#,
            r#""Sid":"Read","Effect":"Allow","NotPrincipal":{"AWS":"w"}"#,
        ] {
            let open = fixed.replace(read, to);
            assert!(problems(&open).iter().any(|f| f.contains("Read lets") && f.contains("decrypt")), "{to}");
        }
        // A wrap by Encrypt is bound to repositories like GenerateDataKey.
        let encrypt = fixed.replace(
            r#""Principal":{"AWS":"w"},"Action":"kms:Decrypt""#,
            r#""Principal":{"AWS":"w"},"Action":["kms:Decrypt","kms:Encrypt"]"#,
        );
        assert!(problems(&encrypt).iter().any(|f| f.contains("Read lets its principals make data keys")));
    }

    #[test]
    fn actions_match_as_iam_globs() {
        assert!(glob("kms:*", "kms:GenerateDataKey"));
        assert!(glob("kms:generatedatakey*", "kms:GenerateDataKey"));
        assert!(glob("*", "kms:Decrypt"));
        assert!(!glob("kms:GenerateDataKeyPair*", "kms:GenerateDataKey"));
        assert!(!glob("kms:Re*From", "kms:ReEncryptTo"));
    }
}
