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

impl KmsServer {
    pub fn start() -> KmsServer {
        let bin = moto_dir().join("bin/moto_server");
        assert!(bin.is_file(), "moto_server not found at {}: run scripts/setup", bin.display());
        let dir = tempfile::Builder::new().prefix("pgpitr-kms-").tempdir().expect("create temp dir for moto");
        let (child, port) = start_listening("moto_server", &dir.path().join("moto.log"), |port| {
            let mut c = Command::new(&bin);
            c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            c
        });
        KmsServer { child, _dir: dir, port }
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

    /// Creates a symmetric key; returns its ARN.
    pub fn create_key(&self) -> String {
        let py = moto_dir().join("bin/python");
        let out = Command::new(py)
            .args([
                "-c",
                "import boto3,sys; c=boto3.client('kms', endpoint_url=sys.argv[1], region_name='us-east-1', \
                 aws_access_key_id='testing', aws_secret_access_key='testing'); \
                 print(c.create_key()['KeyMetadata']['Arn'])",
                &self.endpoint(),
            ])
            .output()
            .expect("run moto's python");
        assert!(out.status.success(), "create_key: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
    }
}

impl Drop for KmsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
