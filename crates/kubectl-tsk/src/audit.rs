//! `kubectl tsk audit`: every key at Imburse of the chosen accounts, classified as managed,
//! leaked, foreign or unmanaged, and on request the leaked ones revoked.
//!
//! The plugin holds no Imburse credentials and reads no Secret: it annotates each account with
//! a request, and the operator, which holds the account's credentials, lists the tenants,
//! classifies the keys and answers in the account's `status.audit`. A revocation names the
//! keys a person confirmed; the operator revokes only those its own classification, made anew
//! at that request, finds leaked.

use std::{
    io::{BufRead as _, IsTerminal as _, Write as _},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde::Serialize;
use serde_json::json;
use tenant_key_api::crd::{
    AUDIT_REQUESTED_AT_ANNOTATION, Audit, ClusterImburseAccount, ImburseAccount, KeyClass,
    REVOKE_LEAKED_ANNOTATION,
};

use crate::{
    cli::{AuditArgs, Scope},
    output::{self, Format},
};

/// What to do about a leaked key.
const LEAKED_HELP: &str = "https://github.com/imburse/tenant-key-operator/blob/main/docs/troubleshooting.md#leakedkeyfound";

/// An account to audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

/// One account's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    #[serde(flatten)]
    pub account: Account,
    pub audit: Audit,
}

impl Account {
    /// `NAME` or `imburseaccount/NAME` in `namespace`, or `clusterimburseaccount/NAME`.
    pub fn parse(value: &str, namespace: &str) -> Result<Self> {
        let (kind, name) = value.split_once('/').unwrap_or(("imburseaccount", value));
        let namespaced = |namespace: Option<String>| Account {
            kind: "ImburseAccount",
            namespace,
            name: name.to_owned(),
        };
        match kind.to_lowercase().as_str() {
            _ if name.is_empty() => bail!("--account needs a name"),
            "imburseaccount" | "imburseaccounts" | "imba" => {
                Ok(namespaced(Some(namespace.to_owned())))
            }
            "clusterimburseaccount" | "clusterimburseaccounts" | "cimba" => Ok(Account {
                kind: "ClusterImburseAccount",
                ..namespaced(None)
            }),
            _ => bail!("--account takes NAME, imburseaccount/NAME or clusterimburseaccount/NAME"),
        }
    }

    fn shown(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind.to_lowercase(), self.name),
            None => format!("{}/{}", self.kind.to_lowercase(), self.name),
        }
    }

    /// Asks the operator for an audit answered under `request`, revoking the leaked keys of
    /// `revoke`; a plain audit clears an earlier revocation request.
    async fn request(&self, client: &Client, request: &str, revoke: &[String]) -> Result<()> {
        let revoke = (!revoke.is_empty()).then(|| revoke.join(","));
        let patch = json!({"metadata": {"annotations": {
            AUDIT_REQUESTED_AT_ANNOTATION: request,
            REVOKE_LEAKED_ANNOTATION: revoke,
        }}});
        let params = PatchParams::default();
        match &self.namespace {
            Some(ns) => {
                let api = Api::<ImburseAccount>::namespaced(client.clone(), ns);
                api.patch(&self.name, &params, &Patch::Merge(&patch))
                    .await?;
            }
            None => {
                let api = Api::<ClusterImburseAccount>::all(client.clone());
                api.patch(&self.name, &params, &Patch::Merge(&patch))
                    .await?;
            }
        }
        Ok(())
    }

    /// The account's last audit.
    async fn audit(&self, client: &Client) -> Result<Option<Audit>> {
        let status = match &self.namespace {
            Some(ns) => {
                Api::<ImburseAccount>::namespaced(client.clone(), ns)
                    .get(&self.name)
                    .await?
                    .status
            }
            None => {
                Api::<ClusterImburseAccount>::all(client.clone())
                    .get(&self.name)
                    .await?
                    .status
            }
        };
        Ok(status.and_then(|s| s.audit))
    }
}

/// The accounts `--account` names, or those of the namespace (every namespace's and the
/// cluster's with -A).
async fn accounts(client: &Client, scope: &Scope, args: &AuditArgs) -> Result<Vec<Account>> {
    if let Some(value) = &args.account {
        let namespace = match scope {
            Scope::Namespace(ns) => ns.as_str(),
            Scope::All => "",
        };
        let account = Account::parse(value, namespace)?;
        if *scope == Scope::All && account.namespace.is_some() {
            bail!("an ImburseAccount cannot be named across all namespaces: use -n instead of -A");
        }
        return Ok(vec![account]);
    }
    let namespaced = match scope {
        Scope::Namespace(ns) => Api::<ImburseAccount>::namespaced(client.clone(), ns),
        Scope::All => Api::all(client.clone()),
    };
    let mut accounts: Vec<Account> = namespaced
        .list(&ListParams::default())
        .await?
        .iter()
        .map(|a| Account {
            kind: "ImburseAccount",
            namespace: a.namespace(),
            name: a.name_any(),
        })
        .collect();
    if *scope == Scope::All {
        let cluster = Api::<ClusterImburseAccount>::all(client.clone());
        accounts.extend(
            cluster
                .list(&ListParams::default())
                .await?
                .iter()
                .map(|a| Account {
                    kind: "ClusterImburseAccount",
                    namespace: None,
                    name: a.name_any(),
                }),
        );
    }
    Ok(accounts)
}

pub async fn run(
    client: Client,
    scope: &Scope,
    args: &AuditArgs,
    format: Option<Format>,
) -> Result<()> {
    let accounts = accounts(&client, scope, args).await?;
    if accounts.is_empty() {
        eprintln!("No accounts found.");
        return Ok(());
    }
    let requests: Vec<_> = accounts.iter().map(|a| (a.clone(), Vec::new())).collect();
    let mut answers = ask(&client, &requests, args.timeout).await?;
    if args.revoke_leaked {
        let leaked: Vec<(Account, Vec<String>)> = answers
            .iter()
            .map(|a| (a.account.clone(), leaked_keys(&a.audit)))
            .filter(|(_, keys)| !keys.is_empty())
            .collect();
        if leaked.is_empty() {
            eprintln!("No leaked keys.");
        } else if confirm(&answers, args.yes)? {
            answers = ask(&client, &leaked, args.timeout).await?;
        } else {
            bail!("nothing revoked");
        }
    }
    let text = match format {
        Some(format) => output::render(format, &answers)?,
        None => table(&answers),
    };
    output::emit(&text)
}

/// Requests an audit of each account, revoking the keys named with it, and waits for every
/// answer.
async fn ask(
    client: &Client,
    requests: &[(Account, Vec<String>)],
    timeout: Duration,
) -> Result<Vec<Answer>> {
    // One value for the whole run: it tells which request each status answers.
    let request = Timestamp::now().to_string();
    for (account, revoke) in requests {
        account
            .request(client, &request, revoke)
            .await
            .with_context(|| format!("requesting an audit of {}", account.shown()))?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut answers = Vec::new();
    for (account, _) in requests {
        loop {
            let audit = account.audit(client).await?;
            if let Some(audit) = audit.filter(|a| a.request == request) {
                answers.push(Answer {
                    account: account.clone(),
                    audit,
                });
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the operator did not answer the audit of {} within {timeout:?}: is it running, and are the account's credentials Ready?",
                    account.shown()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(answers)
}

fn leaked_keys(audit: &Audit) -> Vec<String> {
    audit
        .keys
        .iter()
        .filter(|k| k.class == KeyClass::Leaked)
        .map(|k| k.public_key.clone())
        .collect()
}

/// Shows the leaked keys and asks whether to revoke them; `--yes` answers for a script.
fn confirm(answers: &[Answer], yes: bool) -> Result<bool> {
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "Leaked keys (this cluster made them; no resource holds them):"
    )?;
    for answer in answers {
        for key in answer
            .audit
            .keys
            .iter()
            .filter(|k| k.class == KeyClass::Leaked)
        {
            writeln!(
                err,
                "  {}  tenant {}  {}  {}",
                answer.account.shown(),
                key.tenant_id,
                key.public_key,
                key.name.as_deref().unwrap_or_default()
            )?;
        }
    }
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("not revoking without a confirmation: run in a terminal, or pass --yes");
    }
    write!(
        err,
        "Revoke them at Imburse? Workloads still using them lose access. [y/N] "
    )?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// The answers as a kubectl-style table, then what was revoked, refused or not listed.
fn table(answers: &[Answer]) -> String {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for answer in answers {
        let account = answer.account.shown();
        for key in &answer.audit.keys {
            let owner = match key.class {
                KeyClass::Leaked => format!("revoke with --revoke-leaked; see {LEAKED_HELP}"),
                _ => key.owner.clone().unwrap_or_else(|| "<none>".into()),
            };
            rows.push(vec![
                account.clone(),
                key.tenant_id.clone(),
                key.public_key.clone(),
                key.class.as_str().to_owned(),
                key.name.clone().unwrap_or_default(),
                owner,
            ]);
        }
        let audit = &answer.audit;
        notes.extend(
            audit
                .revoked
                .iter()
                .map(|k| format!("{account}: revoked {k}")),
        );
        notes.extend(
            audit
                .refused
                .iter()
                .map(|r| format!("{account}: not revoked {r}")),
        );
        notes.extend(
            audit
                .errors
                .iter()
                .map(|e| format!("{account}: not listed {e}")),
        );
    }
    let mut text = output::table(
        "",
        &["ACCOUNT", "TENANT", "PUBLIC KEY", "CLASS", "NAME", "OWNER"],
        &rows,
    );
    for note in notes {
        text.push_str(&note);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_named_as_kubectl_names_them() {
        let parsed = Account::parse("imburse", "team-a").unwrap();
        assert_eq!(parsed.kind, "ImburseAccount");
        assert_eq!(parsed.namespace.as_deref(), Some("team-a"));
        let cluster = Account::parse("ClusterImburseAccount/shared", "team-a").unwrap();
        assert_eq!(
            (cluster.kind, cluster.namespace),
            ("ClusterImburseAccount", None)
        );
        assert_eq!(Account::parse("imba/x", "n").unwrap().name, "x");
        assert!(Account::parse("secret/x", "n").is_err());
        assert!(Account::parse("cimba/", "n").is_err());
    }
}
