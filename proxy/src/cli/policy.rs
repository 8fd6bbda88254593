//! `coffer-proxy policy explain`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use coffer_client::exit::{FAILURE, USAGE};
use coffer_proto::RepoName;
use coffer_proxy::access::identity::Identity;
use coffer_proxy::access::policy::{AccessRequest, Action};

use super::{fail, load_config};

#[derive(Subcommand)]
pub(crate) enum PolicyCmd {
    /// Answer "may this identity do this action on this repository from this
    /// address?" with the rule that decided. Exits 0 for allow, 1 for deny.
    Explain {
        /// The identity's trust domain (a name in the config's [[trust_domains]]).
        #[arg(long)]
        trust_domain: String,
        /// The identity, as its certificate's SAN URI (e.g. spiffe://prod/db-1).
        #[arg(long)]
        identity: String,
        /// An action name: whoami, put-config, get-config, put-key, get-key,
        /// missing, put-chunk, get-chunk, commit, list-snapshots, get-snapshot.
        #[arg(long)]
        action: String,
        /// The repository (none for whoami).
        #[arg(long)]
        repo: Option<RepoName>,
        /// The client's address, for rules with `from`.
        #[arg(long, default_value = "127.0.0.1")]
        from: IpAddr,
    },
}

pub(crate) fn policy_command(config: Option<PathBuf>, command: PolicyCmd) -> ExitCode {
    let policy = match load_config(config).map(|c| c.policy()) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return fail(USAGE, &e),
        Err(code) => return code,
    };
    let PolicyCmd::Explain { trust_domain, identity, action, repo, from } = command;
    let Some(action) = Action::parse(&action) else {
        return fail(USAGE, format!("unknown action {action:?}"));
    };
    if action.on_repo() != repo.is_some() {
        let need = if action.on_repo() { "needs --repo" } else { "takes no --repo" };
        return fail(USAGE, format!("{} {need}", action.name()));
    }
    let identity = Identity::new(&trust_domain, &identity);
    let request = AccessRequest { identity: &identity, action, repo: repo.as_ref(), source: from };
    let target = repo.as_ref().map(|r| format!(" on {r}")).unwrap_or_default();
    match policy.decide(&request) {
        Ok(allowed) => {
            println!("allow: {identity} may {}{target} from {from} (rule {:?})", action.name(), allowed.rule);
            ExitCode::SUCCESS
        }
        Err(denied) => {
            println!("deny: {denied}");
            ExitCode::from(FAILURE)
        }
    }
}
