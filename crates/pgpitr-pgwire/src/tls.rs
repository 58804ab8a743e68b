//! TLS on TCP connections, with libpq's meaning of `sslmode`:
//! - `prefer` (the default): TLS if the server offers it, else plain text;
//! - `require`: TLS or nothing;
//! - `verify-ca`: and the certificate chain must lead to `sslrootcert`;
//! - `verify-full`: and the certificate must name the host.
//!
//! As in libpq, `prefer` and `require` also check the chain when a root
//! certificate file exists (`sslrootcert`, or `~/.postgresql/root.crt`), and
//! a client certificate (`sslcert` + `sslkey`, or the `~/.postgresql`
//! defaults) is offered when one is configured or present. `allow`
//! connects in plain text and, as libpq does, tries again with TLS when the
//! server refuses that (pg_hba.conf or authentication). Wherever the
//! chain is checked, certificates revoked by `sslcrl` (or
//! `~/.postgresql/root.crl` if present) are refused; as with OpenSSL's
//! CRL_CHECK_ALL in libpq, a CRL must then cover every issuer in the
//! chain. Unlike libpq, an `sslcrl` that is set but missing is an error,
//! not ignored, and `sslcrldir` is not supported. Also unlike libpq,
//! `prefer` does not retry in plain text after a failed handshake: a
//! certificate that does not verify is an error to fix, not to route around.

use crate::config::{ConnConfig, Host, SslMode, TlsFile, TlsFiles};
use crate::error::ErrorKind;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// SSLRequest: length 8, then the code 1234/5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// What to do on a TCP connection, decided before any network I/O so that
/// a missing or unreadable certificate file fails at once.
pub(crate) struct TlsPlan {
    mode: SslMode,
    config: Arc<ClientConfig>,
    name: Option<ServerName<'static>>,
}

/// Reads the certificate files `config` names; `None` when the mode does
/// not use TLS on this attempt (`allow` uses it only on its retry).
pub(crate) fn plan(config: &ConnConfig, allow_retry: bool) -> Result<Option<TlsPlan>, ErrorKind> {
    let mode = config.sslmode();
    let tries = mode.tries_tls() || (allow_retry && mode == SslMode::Allow);
    if !tries {
        return Ok(None);
    }
    let Host::Tcp(host) = config.host() else { return Ok(None) };
    let name = ServerName::try_from(host.clone()).ok();
    if mode == SslMode::VerifyFull && name.is_none() {
        return Err(ErrorKind::Tls(format!(
            "sslmode=verify-full: host {host:?} is neither a DNS name nor an IP address a certificate can name"
        )));
    }
    Ok(Some(TlsPlan { mode, config: Arc::new(client_config(mode, config.tls_files())?), name }))
}

/// Asks the server for TLS and performs the handshake, or falls back to
/// plain text where `sslmode` allows it.
pub(crate) async fn negotiate(
    mut tcp: TcpStream,
    plan: TlsPlan,
    peer: IpAddr,
) -> Result<Result<Box<TlsStream>, TcpStream>, ErrorKind> {
    tcp.write_all(&SSL_REQUEST).await.map_err(ErrorKind::Io)?;
    // Exactly one byte: anything the server sent after it would be read
    // before the handshake, unauthenticated (CVE-2021-23222).
    let mut answer = [0u8; 1];
    match tcp.read_exact(&mut answer).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ErrorKind::Closed),
        Err(e) => return Err(ErrorKind::Io(e)),
    }
    match answer[0] {
        b'S' => {}
        b'N' if plan.mode.requires_tls() => {
            return Err(ErrorKind::Tls(format!(
                "the server does not accept TLS connections (ssl = off), and sslmode={} requires TLS",
                plan.mode
            )));
        }
        b'N' if plan.mode == SslMode::Allow => {
            return Err(ErrorKind::Tls(
                "sslmode=allow: the server refused the connection in plain text and does not accept TLS (ssl = off)"
                    .into(),
            ));
        }
        b'N' => return Ok(Err(tcp)),
        b'E' => return Err(ErrorKind::Protocol("the server answered the TLS request with an error".into())),
        other => {
            return Err(ErrorKind::Protocol(format!(
                "unexpected answer {:?} to the TLS request; is this a PostgreSQL server?",
                char::from(other)
            )));
        }
    }
    // Without a usable name (prefer/require to an odd host name), the peer's
    // address stands in; the name is not checked in those modes.
    let name = plan.name.unwrap_or(ServerName::IpAddress(peer.into()));
    let connector = tokio_rustls::TlsConnector::from(plan.config);
    match connector.connect(name, tcp).await {
        Ok(s) => Ok(Ok(Box::new(s))),
        Err(e) => Err(handshake_error(e, plan.mode)),
    }
}

/// A failed handshake: certificate and protocol failures need a person
/// (definite); a dropped connection may be retried.
fn handshake_error(e: io::Error, mode: SslMode) -> ErrorKind {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => {
            ErrorKind::Tls(format!("the server's certificate did not verify (sslmode={mode}): {c}"))
        }
        _ => io_error(e),
    }
}

/// An I/O error on a TLS connection: TLS's own failures, such as the
/// server refusing our certificate with an alert after the handshake
/// (TLS 1.3), are definite, unlike a dropped connection.
pub(crate) fn io_error(e: io::Error) -> ErrorKind {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => ErrorKind::Tls(format!("TLS failed: {tls}")),
        None if e.kind() == io::ErrorKind::UnexpectedEof => ErrorKind::Closed,
        None => ErrorKind::Io(e),
    }
}

fn client_config(mode: SslMode, files: &TlsFiles) -> Result<ClientConfig, ErrorKind> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = match roots(mode, files)? {
        None => None,
        Some(roots) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(revocation_lists(files)?)
                .build()
                .map_err(|e| ErrorKind::Tls(format!("cannot use the root certificates or sslcrl: {e}")))?,
        ),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match chain {
        Some(webpki) if mode == SslMode::VerifyFull => webpki,
        chain => Arc::new(PartialCheck { chain, provider: provider.clone() }),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ErrorKind::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match client_certificate(files)? {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| ErrorKind::Tls(format!("cannot use the client certificate: {e}"))),
    }
}

/// The trust anchors for the server's certificate, or `None` to encrypt
/// without checking it.
fn roots(mode: SslMode, files: &TlsFiles) -> Result<Option<RootCertStore>, ErrorKind> {
    let mut store = RootCertStore::empty();
    if files.system_roots() {
        // libpq refuses this too: any publicly trusted certificate would pass.
        if mode != SslMode::VerifyFull {
            return Err(ErrorKind::Tls(format!(
                "sslrootcert=system needs sslmode=verify-full, not sslmode={mode}: without the host name check \
                 any certificate from a public CA would be accepted"
            )));
        }
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(ErrorKind::Tls("sslrootcert=system: no trusted root certificates found on this system".into()));
        }
        return Ok(Some(store));
    }
    let Some(file) = files.rootcert.as_ref().filter(|f| present(f)) else {
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            let default = match &files.rootcert {
                Some(f) => format!(" ({} does not exist)", f.path.display()),
                None => String::new(),
            };
            return Err(ErrorKind::Tls(format!(
                "sslmode={mode} needs the root certificate to check the server against{default}: set sslrootcert=FILE, \
                 or sslrootcert=system for the system's trusted roots"
            )));
        }
        return Ok(None);
    };
    let certs = read_pem::<CertificateDer<'static>>(&file.path, "sslrootcert")?;
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ErrorKind::Tls(format!("sslrootcert {}: no usable certificate in the file", file.path.display())));
    }
    Ok(Some(store))
}

/// The CRLs to check the chain against: none unless configured or present.
fn revocation_lists(files: &TlsFiles) -> Result<Vec<CertificateRevocationListDer<'static>>, ErrorKind> {
    let Some(file) = files.crl.as_ref().filter(|f| present(f)) else { return Ok(Vec::new()) };
    let crls = read_pem::<CertificateRevocationListDer<'static>>(&file.path, "sslcrl")?;
    if crls.is_empty() {
        return Err(ErrorKind::Tls(format!("sslcrl {}: no CRL in the file", file.path.display())));
    }
    Ok(crls)
}

/// The client certificate chain and key, when one is configured or present.
fn client_certificate(
    files: &TlsFiles,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, ErrorKind> {
    let Some(cert) = files.cert.as_ref().filter(|f| present(f)) else { return Ok(None) };
    let chain = read_pem::<CertificateDer<'static>>(&cert.path, "sslcert")?;
    if chain.is_empty() {
        return Err(ErrorKind::Tls(format!("sslcert {}: no certificate in the file", cert.path.display())));
    }
    let Some(key) = files.key.as_ref() else {
        return Err(ErrorKind::Tls(format!("sslcert {} is set but sslkey is not", cert.path.display())));
    };
    check_key_permissions(&key.path)?;
    let key = PrivateKeyDer::from_pem_file(&key.path).map_err(|e| {
        ErrorKind::Tls(format!(
            "sslkey {}: no usable private key ({e}); encrypted keys are not supported",
            key.path.display()
        ))
    })?;
    Ok(Some((chain, key)))
}

/// An explicit file must be used (and so must exist); a default one only
/// if it is there.
fn present(f: &TlsFile) -> bool {
    f.explicit || f.path.exists()
}

fn read_pem<T: PemObject>(path: &Path, what: &str) -> Result<Vec<T>, ErrorKind> {
    let bad = |e: &dyn std::fmt::Display| ErrorKind::Tls(format!("cannot read {what} {}: {e}", path.display()));
    T::pem_file_iter(path).map_err(|e| bad(&e))?.collect::<Result<Vec<T>, _>>().map_err(|e| bad(&e))
}

/// libpq's rule: a key readable by group or others is refused, except
/// group-readable when root owns it (a key shared with a server group).
fn check_key_permissions(path: &Path) -> Result<(), ErrorKind> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).map_err(|e| ErrorKind::Tls(format!("cannot read sslkey {}: {e}", path.display())))?;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if meta.mode() & 0o777 & !allowed != 0 {
        return Err(ErrorKind::Tls(format!(
            "private key file {} has group or world access (mode {:03o}); it must be u=rw (0600) or less, \
             or u=rw,g=r (0640) or less if owned by root",
            path.display(),
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// What libpq checks short of `verify-full`: the chain when there is a
/// root certificate (`verify-ca`, or `prefer`/`require` with one), never
/// the name; with no root certificate, nothing about the certificate. The
/// handshake's signatures are always checked: the server must hold the
/// certificate's key.
#[derive(Debug)]
struct PartialCheck {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PartialCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        // The name is checked after the chain, so this error means the chain passed.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The `tls-server-end-point` channel binding data (RFC 5929): the hash of
/// the server's certificate, with the hash of its signature algorithm (MD5
/// and SHA-1 become SHA-256). `None` for algorithms without one, such as
/// Ed25519 or RSASSA-PSS, as the server then cannot bind either.
pub(crate) fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use ring::digest::{SHA256, SHA384, SHA512, digest};
    // OIDs (DER content bytes) of the certificate signature algorithms.
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let oid = signature_algorithm(cert)?;
    let alg = match oid.split_last()? {
        (0x04 | 0x05 | 0x0b, head) if head == RSA => &SHA256, // md5, sha1, sha256 WithRSAEncryption
        (0x0c, head) if head == RSA => &SHA384,
        (0x0d, head) if head == RSA => &SHA512,
        (0x02, head) if head == ECDSA_SHA2 => &SHA256,
        (0x03, head) if head == ECDSA_SHA2 => &SHA384,
        (0x04, head) if head == ECDSA_SHA2 => &SHA512,
        _ if oid == ECDSA_SHA1 => &SHA256,
        _ => return None,
    };
    Some(digest(alg, cert).as_ref().to_vec())
}

/// The OID of `Certificate.signatureAlgorithm`: SEQUENCE { tbsCertificate,
/// SEQUENCE { OID, ... }, BIT STRING }.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = der(cert)? else { return None };
    let (0x30, _tbs, rest) = der(body)? else { return None };
    let (0x30, alg, _) = der(rest)? else { return None };
    let (0x06, oid, _) = der(alg)? else { return None };
    Some(oid)
}

/// One DER element: (tag, content, what follows). Lengths up to 4 bytes.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_reads_short_and_long_lengths_and_rejects_truncation() {
        assert_eq!(der(&[0x06, 0x02, 0xaa, 0xbb, 0xcc]), Some((0x06, &[0xaa, 0xbb][..], &[0xcc][..])));
        let long: Vec<u8> = [0x30, 0x81, 0x80].into_iter().chain(std::iter::repeat_n(7, 0x80)).collect();
        assert_eq!(der(&long).map(|(t, c, r)| (t, c.len(), r.len())), Some((0x30, 0x80, 0)));
        assert_eq!(der(&[0x30, 0x05, 0x00]), None);
        assert_eq!(der(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(der(&[0x30]), None);
        assert_eq!(server_end_point(b"not a certificate"), None);
    }
}
