//! The `kubectl-tsk` binary run as a process against a real kube-apiserver and etcd. No
//! operator runs: each test writes the resources and their status the way the operator would,
//! in a namespace of its own, so the tests run in parallel. A final pass checks that no output
//! of any command held a private key.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, ExitCode, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::{
    ByteString,
    api::{apps::v1::Deployment, core::v1::Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    config::Kubeconfig,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::{Value, json};
use tenant_key_api::{
    crd::{
        ClusterImburseAccount, ImburseAccount, ROTATE_REQUESTED_AT_ANNOTATION, TenantSecurityKey,
    },
    key_secret::{
        EntryNames, FINGERPRINT_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, OWNER_LABEL,
        fingerprint, owner_label_value, secret_name,
    },
};
use testenv::{
    ControlPlane,
    cluster::{create_namespace, imburse_account, start_cluster},
};

const TENANT: &str = "88fdb12a-14dc-419c-b74c-422e2c25cfe7";
const ACCOUNT_ID: &str = "53ca62f5-b124-447d-b593-2f7ea4fecdcc";
const BASE_URL: &str = "https://sandbox-api.imbursepayments.com";
/// Bound on waiting for the plugin or the API server; not a performance assertion.
const WAIT: Duration = Duration::from_secs(60);

struct World {
    runtime: tokio::runtime::Runtime,
    _control_plane: ControlPlane,
    client: Client,
    kubeconfig: PathBuf,
    /// Every private key the tests stored, and everything the plugin printed.
    private_keys: Mutex<Vec<String>>,
    outputs: Mutex<Vec<String>>,
}

impl testenv::suite::World for World {}

fn main() -> ExitCode {
    testenv::suite::run(
        start,
        testenv::named_tests![
            status_shows_the_whole_picture,
            status_finds_a_secret_that_differs,
            status_of_a_new_key_with_a_cluster_account,
            status_lists_every_key,
            namespace_and_context_follow_the_kubeconfig,
            missing_resources_are_errors,
            inspect_secret_shows_its_public_parts,
            rotate_sets_the_annotation,
            rotate_wait_returns_once_the_key_is_rotated,
            rotate_wait_gives_up_after_the_timeout,
            migrate_rewrites_then_leaves_alone,
            version_reads_the_operator_image,
        ],
        // After every other test, over everything they made the plugin print.
        testenv::named_tests![no_private_key_in_any_output],
    )
}

fn start() -> Result<World> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (control_plane, client) = runtime.block_on(start_cluster(&[]))?;
    Ok(World {
        runtime,
        kubeconfig: control_plane.kubeconfig_path().to_owned(),
        _control_plane: control_plane,
        client,
        private_keys: Mutex::default(),
        outputs: Mutex::default(),
    })
}

/// What a run of the plugin printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Result<Self> {
        ensure!(
            self.code == Some(0),
            "kubectl-tsk exited with {:?}:\n{}{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }

    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {}", self.stdout))
    }
}

impl World {
    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.handle().block_on(f)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kubectl-tsk"));
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs the plugin with the test's kubeconfig (unless `args` names another).
    fn kubectl(&self, args: &[&str]) -> Result<Run> {
        let output = self.command(args).output()?;
        Ok(self.record(output))
    }

    /// Waits for a plugin started with [`World::command`].
    fn finish(&self, mut child: Child) -> Result<Run> {
        let deadline = Instant::now() + WAIT;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                bail!("kubectl-tsk did not finish in {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(self.record(child.wait_with_output()?))
    }

    fn record(&self, output: std::process::Output) -> Run {
        let run = Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        let mut outputs = self.outputs.lock().unwrap_or_else(|e| e.into_inner());
        outputs.push(run.stdout.clone());
        outputs.push(run.stderr.clone());
        run
    }

    fn keys(&self, namespace: &str) -> Api<TenantSecurityKey> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// A namespace with a Ready `ImburseAccount` named `imburse`.
    async fn namespace(&self, name: &str) -> Result<()> {
        create_namespace(&self.client, name, BTreeMap::new()).await?;
        let account = imburse_account(
            name,
            "imburse",
            BASE_URL,
            "imburse-credentials",
            json!({"accountId": ACCOUNT_ID}),
        )?;
        let accounts: Api<ImburseAccount> = Api::namespaced(self.client.clone(), name);
        accounts.create(&PostParams::default(), &account).await?;
        let status = json!({"status": {"observedGeneration": 1, "conditions": [
            condition("Ready", "True", "CredentialsVerified", "a management token was obtained"),
        ]}});
        accounts
            .patch_status("imburse", &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// A TenantSecurityKey with a key in its Secret and a Ready status, as the operator leaves
    /// it; `labels` go on the resource. Returns the key's fingerprint.
    async fn ready_key(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<String> {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let tsk: TenantSecurityKey = serde_json::from_value(json!({
            "apiVersion": "imbursepayments.com/v1beta1",
            "kind": "TenantSecurityKey",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "accountRef": {"kind": "ImburseAccount", "name": "imburse"},
                "tenantId": TENANT,
                "roles": ["tenant-admin"],
                "rotation": {"interval": "720h"},
            },
        }))?;
        let tsk = self
            .keys(namespace)
            .create(&PostParams::default(), &tsk)
            .await?;
        let private_key = format!("pRiVaTe{namespace}{name}0123456789abcdefABCDEF=");
        self.private_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(private_key.clone());
        let public_key = format!("public-key-of-{name}");
        let fingerprint = fingerprint(&public_key, &private_key);
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .create(
                &PostParams::default(),
                &key_secret(&tsk, &public_key, &private_key, &fingerprint),
            )
            .await?;
        let now = Timestamp::now();
        let created = now - SignedDuration::from_hours(50);
        let status = json!({"status": {
            "observedGeneration": 1,
            "conditions": [
                condition("Ready", "True", "KeyReady", "the key is in the Secret"),
                condition("Reconciling", "False", "KeyReady", "the key is in the Secret"),
                condition("Stalled", "False", "KeyReady", "the key is in the Secret"),
            ],
            "publicKey": public_key,
            "keyName": format!("{namespace}/{name}"),
            "secretName": name,
            "createdAt": created.to_string(),
            "fingerprint": fingerprint,
            "tenantId": TENANT,
            "accountRef": {"kind": "ImburseAccount", "name": "imburse"},
            "endpoint": {"baseUrl": BASE_URL, "apiGeneration": "seed", "accountId": ACCOUNT_ID},
            "roles": ["tenant-admin"],
            "attempt": "attempt-1",
            "previousKeys": [{
                "publicKey": "replaced-public-key",
                "tenantId": TENANT,
                "accountRef": {"kind": "ImburseAccount", "name": "imburse"},
                "revokeAfter": (now + SignedDuration::from_mins(4)).to_string(),
                "revocationError": "Imburse answered 403: the account may not revoke keys",
            }],
            "nextRotationAt": (created + SignedDuration::from_hours(720)).to_string(),
        }});
        self.keys(namespace)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "tenant-key-operator".into(),
                instance: None,
            },
        );
        recorder
            .publish(
                &Event {
                    type_: EventType::Normal,
                    reason: "KeyCreated".into(),
                    note: Some(format!("created key {namespace}/{name}")),
                    action: "CreateKey".into(),
                    secondary: None,
                },
                &tsk.object_ref(&()),
            )
            .await?;
        Ok(fingerprint)
    }
}

/// The Secret of a key as the operator writes it (the key Secret's contract of
/// `tenant_key_api::key_secret`): owned by the resource, labelled, annotated with the key's
/// fingerprint, with the default entries.
fn key_secret(
    tsk: &TenantSecurityKey,
    public_key: &str,
    private_key: &str,
    fingerprint: &str,
) -> Secret {
    let names = EntryNames::of_key(tsk);
    let data = [
        (names.public_key, public_key),
        (names.private_key, private_key),
        (names.tenant_id, TENANT),
        (names.account_id, ACCOUNT_ID),
        (names.base_url, BASE_URL),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), ByteString(value.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(tsk)),
            namespace: tsk.namespace(),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (OWNER_LABEL.to_owned(), owner_label_value(&tsk.name_any())),
            ])),
            annotations: Some(BTreeMap::from([(
                FINGERPRINT_ANNOTATION.to_owned(),
                fingerprint.to_owned(),
            )])),
            owner_references: tsk.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 1,
        "lastTransitionTime": Timestamp::now().to_string(),
    })
}

fn contains_all(text: &str, parts: &[&str]) -> Result<()> {
    for part in parts {
        ensure!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    Ok(())
}

fn status_shows_the_whole_picture(world: &World) -> Result<()> {
    let ns = "status-whole";
    let fingerprint = world.block_on(async {
        world.namespace(ns).await?;
        world.ready_key(ns, "checkout-api", &[]).await
    })?;
    let run = world.kubectl(&["status", "checkout-api", "-n", ns])?.ok()?;
    contains_all(
        &run.stdout,
        &[
            "Name:                 checkout-api",
            "Public key:           public-key-of-checkout-api",
            "Key age:              2d2h (created ",
            "Next rotation:        in 27d",
            &format!("Secret:               checkout-api: holds the recorded key ({fingerprint})"),
            "Account:              ImburseAccount/imburse: Ready=True CredentialsVerified",
            "Ready         True     KeyReady   the key is in the Secret",
            "replaced-public-key   in ",
            "Imburse answered 403: the account may not revoke keys",
            "Normal   KeyCreated",
            "created key status-whole/checkout-api",
        ],
    )?;
    let json = world
        .kubectl(&["status", "checkout-api", "-n", ns, "-o", "json"])?
        .ok()?
        .json()?;
    ensure!(json["secret"]["fingerprint"] == "Matches", "{json:#}");
    ensure!(
        json["secret"]["storedFingerprint"] == fingerprint.as_str(),
        "{json:#}"
    );
    ensure!(json["account"]["ready"]["status"] == "True", "{json:#}");
    ensure!(json["events"][0]["reason"] == "KeyCreated", "{json:#}");
    ensure!(
        json["pendingRevocations"][0]["revokeAfter"].is_string(),
        "{json:#}"
    );
    let age = json["keyAgeSeconds"].as_i64().unwrap_or_default();
    ensure!((50 * 3600..51 * 3600).contains(&age), "{json:#}");
    let yaml = world
        .kubectl(&["status", "checkout-api", "-n", ns, "-o", "yaml"])?
        .ok()?;
    let yaml: Value = serde_yaml::from_str(&yaml.stdout)?;
    ensure!(
        yaml == with_key_age_of(json.clone(), &yaml),
        "YAML and JSON differ"
    );
    Ok(())
}

/// `json` with the key age of `other`: the two runs happen a moment apart.
fn with_key_age_of(mut json: Value, other: &Value) -> Value {
    json["keyAgeSeconds"] = other["keyAgeSeconds"].clone();
    json
}

fn status_finds_a_secret_that_differs(world: &World) -> Result<()> {
    let ns = "status-differs";
    world.block_on(async {
        world.namespace(ns).await?;
        world.ready_key(ns, "checkout-api", &[]).await?;
        let patch = json!({"data": {"publicKey": "c29tZXRoaW5nLWVsc2U="}});
        Api::<Secret>::namespaced(world.client.clone(), ns)
            .patch(
                "checkout-api",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        anyhow::Ok(())
    })?;
    let run = world.kubectl(&["status", "checkout-api", "-n", ns])?.ok()?;
    contains_all(&run.stdout, &["than the status records"])?;
    let json = world
        .kubectl(&["status", "checkout-api", "-n", ns, "-o", "json"])?
        .ok()?
        .json()?;
    ensure!(json["secret"]["fingerprint"] == "Differs", "{json:#}");
    Ok(())
}

fn status_of_a_new_key_with_a_cluster_account(world: &World) -> Result<()> {
    let ns = "status-new";
    world.block_on(async {
        world.namespace(ns).await?;
        let account: ClusterImburseAccount = serde_json::from_value(json!({
            "apiVersion": "imbursepayments.com/v1beta1",
            "kind": "ClusterImburseAccount",
            "metadata": {"name": "shared"},
            "spec": {"baseUrl": BASE_URL, "credentialsSecretRef": {"name": "shared-credentials"}},
        }))?;
        let accounts: Api<ClusterImburseAccount> = Api::all(world.client.clone());
        accounts.create(&PostParams::default(), &account).await?;
        let status = json!({"status": {"conditions": [
            condition("Ready", "False", "CredentialsInvalid", "Imburse answered 401"),
        ]}});
        accounts
            .patch_status("shared", &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        let tsk: TenantSecurityKey = serde_json::from_value(json!({
            "apiVersion": "imbursepayments.com/v1beta1",
            "kind": "TenantSecurityKey",
            "metadata": {"name": "fresh", "namespace": ns},
            "spec": {
                "accountRef": {"kind": "ClusterImburseAccount", "name": "shared"},
                "tenantId": TENANT,
                "roles": ["tenant-admin"],
                "secret": {"name": "fresh-key"},
            },
        }))?;
        world.keys(ns).create(&PostParams::default(), &tsk).await?;
        anyhow::Ok(())
    })?;
    let run = world.kubectl(&["status", "fresh", "-n", ns])?.ok()?;
    contains_all(
        &run.stdout,
        &[
            "Key age:              <no key yet>",
            "Next rotation:        not scheduled",
            "Secret:               fresh-key: not found",
            "Account:              ClusterImburseAccount/shared: Ready=False CredentialsInvalid: Imburse answered 401",
            "Conditions:\n  <none>\n",
            "Events:\n  <none>\n",
        ],
    )?;
    Ok(())
}

fn status_lists_every_key(world: &World) -> Result<()> {
    let ns = "status-list";
    world.block_on(async {
        world.namespace(ns).await?;
        world.ready_key(ns, "a", &[]).await?;
        world.ready_key(ns, "b", &[]).await
    })?;
    let run = world.kubectl(&["status", "-n", ns])?.ok()?;
    let lines: Vec<&str> = run.stdout.lines().collect();
    ensure!(lines.len() == 3, "{}", run.stdout);
    contains_all(
        lines[0],
        &[
            "NAME",
            "READY",
            "KEY AGE",
            "NEXT ROTATION",
            "PENDING REVOCATIONS",
        ],
    )?;
    ensure!(!lines[0].contains("NAMESPACE"), "{}", run.stdout);
    contains_all(
        lines[1],
        &["a ", "True", "KeyReady", "2d2h", "in 27d", "1 (1 failed)"],
    )?;
    let all = world.kubectl(&["status", "-A"])?.ok()?;
    ensure!(all.stdout.starts_with("NAMESPACE"), "{}", all.stdout);
    for name in ["a", "b"] {
        ensure!(
            all.stdout.lines().any(|l| {
                let mut columns = l.split_whitespace();
                columns.next() == Some(ns) && columns.next() == Some(name)
            }),
            "{ns}/{name} missing from:\n{}",
            all.stdout
        );
    }
    let json = world
        .kubectl(&["status", "-n", ns, "-o", "json"])?
        .ok()?
        .json()?;
    ensure!(
        json[1]["name"] == "b" && json[1]["pendingRevocations"] == 1,
        "{json:#}"
    );
    let empty = world.kubectl(&["status", "-n", "default"])?.ok()?;
    ensure!(empty.stdout.is_empty(), "{}", empty.stdout);
    contains_all(&empty.stderr, &["No resources found in default namespace."])?;
    Ok(())
}

fn namespace_and_context_follow_the_kubeconfig(world: &World) -> Result<()> {
    let ns = "from-context";
    world.block_on(async {
        world.namespace(ns).await?;
        world.ready_key(ns, "checkout-api", &[]).await
    })?;
    let mut kubeconfig = Kubeconfig::read_from(&world.kubeconfig)?;
    let mut context = kubeconfig.contexts[0].clone();
    context.name = "team".into();
    if let Some(c) = context.context.as_mut() {
        c.namespace = Some(ns.into());
    }
    kubeconfig.contexts.push(context);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    let path = path.to_string_lossy().into_owned();
    // Without -n, the current context's namespace (none here) means `default`.
    let run = world.kubectl(&["status", "checkout-api", "--kubeconfig", &path])?;
    ensure!(run.code == Some(1), "{}{}", run.stdout, run.stderr);
    contains_all(&run.stderr, &["not found in namespace \"default\""])?;
    world
        .kubectl(&[
            "status",
            "checkout-api",
            "--kubeconfig",
            &path,
            "--context",
            "team",
        ])?
        .ok()?;
    let run = world.kubectl(&[
        "status",
        "checkout-api",
        "--context",
        "nowhere",
        "--kubeconfig",
        &path,
    ])?;
    ensure!(run.code == Some(1), "{}{}", run.stdout, run.stderr);
    contains_all(&run.stderr, &["nowhere"])?;
    Ok(())
}

fn missing_resources_are_errors(world: &World) -> Result<()> {
    let ns = "missing";
    world.block_on(world.namespace(ns))?;
    for args in [
        &["status", "nothing", "-n", ns][..],
        &["inspect", "secret", "nothing", "-n", ns],
        &["rotate", "nothing", "-n", ns],
        &["status", "nothing", "-n", ns, "-o", "json"],
    ] {
        let run = world.kubectl(args)?;
        ensure!(
            run.code == Some(1),
            "{args:?}: {:?} {}{}",
            run.code,
            run.stdout,
            run.stderr
        );
        contains_all(
            &run.stderr,
            &["error: ", "\"nothing\" not found in namespace \"missing\""],
        )?;
        ensure!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    let run = world.kubectl(&["status", "nothing", "-A"])?;
    ensure!(run.code == Some(1), "{}", run.stderr);
    contains_all(&run.stderr, &["across all namespaces"])?;
    Ok(())
}

/// `version` prints the plugin's version and, for the server, the tag of the operator
/// Deployment's image, pinned by digest as the released chart installs it.
fn version_reads_the_operator_image(world: &World) -> Result<()> {
    let ns = "operator-version";
    world.block_on(world.namespace(ns))?;
    let image = "registry.example.com:5000/tenant-key-operator:9.8.7@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let labels = json!({"app.kubernetes.io/name": "tenant-key-operator"});
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "tenant-key-operator", "namespace": ns, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "operator", "image": image}]},
            },
        },
    }))?;
    world.block_on(
        Api::<Deployment>::namespaced(world.client.clone(), ns)
            .create(&PostParams::default(), &deployment),
    )?;
    let run = world.kubectl(&["version"])?.ok()?;
    contains_all(
        &run.stdout,
        &[
            &format!("Client Version: {}\n", env!("CARGO_PKG_VERSION")),
            &format!("Server Version: 9.8.7 ({ns}/tenant-key-operator, image {image})"),
        ],
    )?;
    let json = world.kubectl(&["version", "-o", "json"])?.ok()?.json()?;
    ensure!(json["clientVersion"] == env!("CARGO_PKG_VERSION"), "{json}");
    ensure!(
        json["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["namespace"] == ns && s["version"] == "9.8.7" && s["image"] == image),
        "{json}"
    );
    Ok(())
}

fn inspect_secret_shows_its_public_parts(world: &World) -> Result<()> {
    let ns = "inspect";
    let fingerprint = world.block_on(async {
        world.namespace(ns).await?;
        world.ready_key(ns, "checkout-api", &[]).await
    })?;
    let run = world
        .kubectl(&["inspect", "secret", "checkout-api", "-n", ns])?
        .ok()?;
    contains_all(
        &run.stdout,
        &[
            "Owner:        TenantSecurityKey checkout-api (its status records this key)",
            "Public key:   public-key-of-checkout-api",
            &format!("Fingerprint:  {fingerprint} (matches the annotation)"),
            &format!("Tenant id:    {TENANT}"),
            &format!("Account id:   {ACCOUNT_ID}"),
            &format!("Base URL:     {BASE_URL}"),
            "Entries:      accountId, baseUrl, privateKey, publicKey, tenantId",
        ],
    )?;
    for format in ["json", "yaml"] {
        let run = world
            .kubectl(&["inspect", "secret", "checkout-api", "-n", ns, "-o", format])?
            .ok()?;
        let value: Value = serde_yaml::from_str(&run.stdout)?;
        ensure!(value["owner"] == "checkout-api", "{value:#}");
        ensure!(value["fingerprint"] == fingerprint.as_str(), "{value:#}");
        ensure!(value["accountId"] == ACCOUNT_ID, "{value:#}");
    }
    let private_key = format!("pRiVaTe{ns}checkout-api");
    let outputs = world.outputs.lock().unwrap_or_else(|e| e.into_inner());
    ensure!(
        outputs.iter().all(|o| !o.contains(&private_key)),
        "a private key was printed"
    );
    Ok(())
}

fn rotate_sets_the_annotation(world: &World) -> Result<()> {
    let ns = "rotate-annotation";
    world.block_on(async {
        world.namespace(ns).await?;
        world.ready_key(ns, "a", &[("team", "checkout")]).await?;
        world.ready_key(ns, "b", &[("team", "billing")]).await?;
        world.ready_key(ns, "c", &[("team", "checkout")]).await
    })?;
    let requested = |name: &str| -> Result<Option<String>> {
        let tsk = world.block_on(world.keys(ns).get(name))?;
        Ok(tsk
            .annotations()
            .get(ROTATE_REQUESTED_AT_ANNOTATION)
            .cloned())
    };
    let run = world.kubectl(&["rotate", "a", "-n", ns])?.ok()?;
    contains_all(
        &run.stdout,
        &[&format!("tenantsecuritykey {ns}/a rotation requested")],
    )?;
    let first = requested("a")?.context("a has no rotate annotation")?;
    ensure!(
        first.parse::<Timestamp>().is_ok(),
        "{first:?} is not an RFC 3339 time"
    );
    ensure!(requested("b")?.is_none() && requested("c")?.is_none());

    world
        .kubectl(&["rotate", "-l", "team=checkout", "-n", ns])?
        .ok()?;
    let second = requested("a")?.context("a lost its annotation")?;
    ensure!(second != first, "a second request must change the value");
    ensure!(requested("c")? == Some(second.clone()) && requested("b")?.is_none());

    let json = world
        .kubectl(&["rotate", "--all", "-n", ns, "-o", "json"])?
        .ok()?
        .json()?;
    let names: Vec<&str> = json
        .as_array()
        .context("not a list")?
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    ensure!(names == ["a", "b", "c"], "{json:#}");
    let third = requested("b")?.context("b has no rotate annotation")?;
    ensure!(json[1]["requestedAt"] == third.as_str(), "{json:#}");
    Ok(())
}

fn rotate_wait_returns_once_the_key_is_rotated(world: &World) -> Result<()> {
    let ns = "rotate-wait";
    world.block_on(async {
        world.namespace(ns).await?;
        world.ready_key(ns, "checkout-api", &[]).await
    })?;
    let mut child = world
        .command(&[
            "rotate",
            "checkout-api",
            "-n",
            ns,
            "--wait",
            "--timeout",
            "60s",
        ])
        .spawn()?;
    let requested = world.block_on(async {
        let deadline = Instant::now() + WAIT;
        loop {
            let tsk = world.keys(ns).get("checkout-api").await?;
            if let Some(value) = tsk.annotations().get(ROTATE_REQUESTED_AT_ANNOTATION) {
                return anyhow::Ok(value.clone());
            }
            ensure!(Instant::now() < deadline, "the annotation was never set");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?;
    // The operator records the request with the new key, but the key is not Ready yet.
    let write = |ready: &str, fingerprint: &str| {
        let status = json!({"status": {
            "lastHandledRotateRequest": requested,
            "fingerprint": fingerprint,
            "conditions": [
                condition("Ready", ready, "KeyReady", ""),
                condition("Reconciling", "False", "KeyReady", ""),
                condition("Stalled", "False", "KeyReady", ""),
            ],
        }});
        world.block_on(world.keys(ns).patch_status(
            "checkout-api",
            &PatchParams::default(),
            &Patch::Merge(&status),
        ))
    };
    write("False", "sha256:new")?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        child.try_wait()?.is_none(),
        "returned before the key was Ready"
    );
    write("True", "sha256:new")?;
    let run = world.finish(child)?.ok()?;
    contains_all(
        &run.stdout,
        &[
            &format!("tenantsecuritykey {ns}/checkout-api rotation requested"),
            &format!("tenantsecuritykey {ns}/checkout-api rotated (fingerprint sha256:new)"),
        ],
    )?;
    Ok(())
}

fn rotate_wait_gives_up_after_the_timeout(world: &World) -> Result<()> {
    let ns = "rotate-timeout";
    world.block_on(async {
        world.namespace(ns).await?;
        world.ready_key(ns, "checkout-api", &[]).await
    })?;
    let child = world
        .command(&[
            "rotate",
            "checkout-api",
            "-n",
            ns,
            "--wait",
            "--timeout",
            "2s",
            "-o",
            "json",
        ])
        .spawn()?;
    let run = world.finish(child)?;
    ensure!(
        run.code == Some(1),
        "{:?} {}{}",
        run.code,
        run.stdout,
        run.stderr
    );
    contains_all(
        &run.stderr,
        &[&format!(
            "timed out after 2s waiting for the rotation of {ns}/checkout-api"
        )],
    )?;
    let json = run.json()?;
    ensure!(json[0]["rotated"] == false, "{json:#}");
    Ok(())
}

fn no_private_key_in_any_output(world: &World) -> Result<()> {
    let keys = world.private_keys.lock().unwrap_or_else(|e| e.into_inner());
    let outputs = world.outputs.lock().unwrap_or_else(|e| e.into_inner());
    ensure!(
        !keys.is_empty() && !outputs.is_empty(),
        "nothing was checked"
    );
    for key in keys.iter() {
        for output in outputs.iter() {
            ensure!(
                !output.contains(key.as_str()),
                "a private key was printed:\n{output}"
            );
        }
    }
    Ok(())
}

/// `migrate` rewrites the objects of a CRD whose `storedVersions` lists v1alpha1 and leaves
/// only v1beta1 there; run again, it finds nothing to do. The objects here are stored at
/// v1beta1 already, so the rewrites change nothing in etcd and the other tests see nothing.
fn migrate_rewrites_then_leaves_alone(world: &World) -> Result<()> {
    const CRD: &str = "tenantsecuritykeys.imbursepayments.com";
    let crds: Api<CustomResourceDefinition> = Api::all(world.client.clone());
    world.block_on(async {
        world.namespace("migrate").await?;
        world.ready_key("migrate", "stored", &[]).await?;
        let both = json!({"status": {"storedVersions": ["v1alpha1", "v1beta1"]}});
        crds.patch_status(CRD, &PatchParams::default(), &Patch::Merge(&both))
            .await?;
        anyhow::Ok(())
    })?;
    let first = world.kubectl(&["migrate"])?.ok()?;
    contains_all(
        &first.stdout,
        &[
            &format!("{CRD}: storedVersions [v1alpha1, v1beta1]"),
            "objects rewritten at v1beta1: ",
            "set storedVersions to [v1beta1]",
            "imburseaccounts.imbursepayments.com: storedVersions [v1beta1]",
            "already migrated, nothing to do",
        ],
    )?;
    let stored = world
        .block_on(crds.get_status(CRD))?
        .status
        .and_then(|s| s.stored_versions);
    ensure!(stored == Some(vec!["v1beta1".to_owned()]), "{stored:?}");
    let again = world.kubectl(&["migrate", "-o", "json"])?.ok()?.json()?;
    let reports = again.as_array().context("not a list")?;
    ensure!(
        reports.len() == 3
            && reports
                .iter()
                .all(|r| r["rewritten"] == 0 && r["storedVersionsUpdated"] == false),
        "a second run did something: {again}"
    );
    Ok(())
}
