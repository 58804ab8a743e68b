//! A real KMS-speaking server on 127.0.0.1: moto's server (installed by
//! `scripts/setup` from PyPI into its own virtual environment), which
//! implements the AWS KMS API (CreateKey, Encrypt, Decrypt with encryption
//! contexts, GenerateDataKey). Killed on drop.

use crate::start_listening;
use std::path::PathBuf;
use std::process::{Child, Command};

pub struct KmsServer {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

/// Where `scripts/setup` puts moto: `$PGPITR_MOTO_DIR`, else
/// `~/.local/share/pgpitr-moto`.
fn moto_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PGPITR_MOTO_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".local/share/pgpitr-moto")
}

/// Makes a key and the users of `argv[2]`; prints them as JSON.
const SETUP_USERS: &str = r#"
import boto3, json, sys
kw = dict(endpoint_url=sys.argv[1], region_name='us-east-1',
          aws_access_key_id='testing', aws_secret_access_key='testing')
kms, iam = boto3.client('kms', **kw), boto3.client('iam', **kw)
out = {'key': kms.create_key()['KeyMetadata']['Arn'], 'users': []}
for u in json.loads(sys.argv[2]):
    iam.create_user(UserName=u['name'])
    ak = iam.create_access_key(UserName=u['name'])['AccessKey']
    policy = {'Version': '2012-10-17',
              'Statement': [{'Effect': 'Allow', 'Action': u['actions'], 'Resource': '*'}]}
    iam.put_user_policy(UserName=u['name'], PolicyName='kms', PolicyDocument=json.dumps(policy))
    out['users'].append([ak['AccessKeyId'], ak['SecretAccessKey']])
print(json.dumps(out))
"#;

/// An IAM user's access key.
pub struct Creds {
    pub access_key: String,
    pub secret_key: String,
}

impl KmsServer {
    pub fn start() -> KmsServer {
        Self::start_counting(None)
    }

    /// A server that checks IAM after `free` unauthenticated actions
    /// (moto's `INITIAL_NO_AUTH_ACTION_COUNT`).
    fn start_counting(free: Option<usize>) -> KmsServer {
        let bin = moto_dir().join("bin/moto_server");
        assert!(bin.is_file(), "moto_server not found at {}: run scripts/setup", bin.display());
        let dir = tempfile::Builder::new().prefix("pgpitr-kms-").tempdir().expect("create temp dir for moto");
        let (child, port) = start_listening("moto_server", &dir.path().join("moto.log"), |port| {
            let mut c = Command::new(&bin);
            c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            if let Some(n) = free {
                c.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
            }
            c
        });
        KmsServer { child, _dir: dir, port }
    }

    /// A server that authorizes every request by IAM: one key (its ARN is
    /// returned) and one user per `(name, allowed KMS actions)`, whose
    /// credentials are returned in order. Moto's own test credentials are
    /// refused from then on.
    pub fn start_authorizing(users: &[(&str, &[&str])]) -> (KmsServer, String, Vec<Creds>) {
        // create_key, then create_user, create_access_key and put_user_policy per user.
        let server = Self::start_counting(Some(1 + 3 * users.len()));
        let spec: Vec<serde_json::Value> =
            users.iter().map(|(name, actions)| serde_json::json!({"name": name, "actions": actions})).collect();
        let out = server.python(SETUP_USERS, &[&serde_json::Value::Array(spec).to_string()]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("setup output is JSON");
        let key = v["key"].as_str().expect("key ARN").to_string();
        let creds = v["users"]
            .as_array()
            .expect("users")
            .iter()
            .map(|u| Creds {
                access_key: u[0].as_str().expect("access key").into(),
                secret_key: u[1].as_str().expect("secret key").into(),
            })
            .collect();
        (server, key, creds)
    }

    /// Stops answering (SIGSTOP): see [`crate::signal`].
    pub fn pause(&self) {
        crate::signal(&self.child, "-STOP", "moto");
    }

    /// Answers again (SIGCONT), the waiting requests first.
    pub fn resume(&self) {
        crate::signal(&self.child, "-CONT", "moto");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What an AWS SDK client needs to reach it (moto accepts any key).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL_KMS", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// [`KmsServer::env`] with `creds` instead of moto's test credentials.
    pub fn env_as(&self, creds: &Creds) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env.retain(|(k, _)| !matches!(*k, "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY"));
        env.push(("AWS_ACCESS_KEY_ID", creds.access_key.clone()));
        env.push(("AWS_SECRET_ACCESS_KEY", creds.secret_key.clone()));
        env
    }

    /// Creates a symmetric key; returns its ARN.
    pub fn create_key(&self) -> String {
        self.python(
            "import boto3,sys; c=boto3.client('kms', endpoint_url=sys.argv[1], region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing'); \
             print(c.create_key()['KeyMetadata']['Arn'])",
            &[],
        )
    }

    /// Runs `script` with moto's python (boto3), the endpoint as its first
    /// argument; returns its trimmed stdout.
    fn python(&self, script: &str, args: &[&str]) -> String {
        let py = moto_dir().join("bin/python");
        let out =
            Command::new(py).args(["-c", script, &self.endpoint()]).args(args).output().expect("run moto's python");
        assert!(out.status.success(), "moto setup: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
    }
}

impl Drop for KmsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
