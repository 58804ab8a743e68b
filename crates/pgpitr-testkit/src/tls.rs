//! Throwaway certificates for TLS tests, made with the `openssl` command
//! line tool (Debian package `openssl`, installed by scripts/setup).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA, a server certificate it signed for the DNS name `localhost` only
/// (not `127.0.0.1`, so host name checks can fail on purpose), a client
/// certificate whose common name is a role, and an unrelated second CA.
///
/// Files: `ca.crt`, `server.crt`, `server.key`, `client.crt`, `client.key`,
/// `other-ca.crt`, and two CRLs of `ca`: `ca-empty.crl` revokes nothing,
/// `ca-revoked.crl` revokes the server certificate. Keys are mode 0600.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn generate(client_role: &str) -> TestPki {
        let dir = tempfile::Builder::new().prefix("pgpitr-pki-").tempdir().expect("create pki dir");
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            let (key, crt, subj) = (format!("{ca}.key"), format!("{ca}.crt"), format!("/CN=pgpitr test {ca}"));
            let new_key = ["req", "-x509", "-newkey", "ec", "-pkeyopt", EC_P256, "-nodes", "-keyout", &key];
            openssl(d, &[&new_key[..], &["-out", &crt, "-days", "2", "-subj", &subj]].concat());
        }
        issue(d, "server", "localhost", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n");
        issue(d, "client", client_role, "extendedKeyUsage=clientAuth\n");
        revocation_lists(d);
        TestPki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

const EC_P256: &str = "ec_paramgen_curve:prime256v1";

/// A key and a certificate for `cn`, signed by `ca`.
fn issue(d: &Path, name: &str, cn: &str, extensions: &str) {
    let (key, csr, crt, ext) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
    std::fs::write(d.join(&ext), format!("basicConstraints=CA:FALSE\n{extensions}")).expect("write extensions");
    let subj = format!("/CN={cn}");
    let new_key = ["req", "-new", "-newkey", "ec", "-pkeyopt", EC_P256, "-nodes", "-keyout", &key];
    openssl(d, &[&new_key[..], &["-out", &csr, "-subj", &subj]].concat());
    let sign = ["x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"];
    openssl(d, &[&sign[..], &["-days", "2", "-out", &crt, "-extfile", &ext]].concat());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join(&key), std::fs::Permissions::from_mode(0o600)).expect("chmod key");
}

/// `openssl ca` keeps its revocations in a small database of files.
fn revocation_lists(d: &Path) {
    let conf = "[ca]\ndefault_ca = ca\n[ca]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
                private_key = ca.key\ncertificate = ca.crt\ndefault_md = sha256\ndefault_crl_days = 2\n";
    std::fs::write(d.join("ca.cnf"), conf).expect("write ca.cnf");
    std::fs::write(d.join("index.txt"), "").expect("write index.txt");
    std::fs::write(d.join("crlnumber"), "01\n").expect("write crlnumber");
    openssl(d, &["ca", "-config", "ca.cnf", "-gencrl", "-out", "ca-empty.crl"]);
    openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "server.crt"]);
    openssl(d, &["ca", "-config", "ca.cnf", "-gencrl", "-out", "ca-revoked.crl"]);
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (run scripts/setup): {e}"));
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}
