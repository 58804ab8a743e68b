//! AWS KMS as the key-encryption key: data keys are wrapped by KMS Encrypt
//! and unwrapped by Decrypt, with the data key's ID as encryption context,
//! so a wrapping moved to another entry does not decrypt. Credentials,
//! region and endpoint (`AWS_ENDPOINT_URL_KMS`) come from the standard AWS
//! chain; the key-encryption key never leaves KMS.

use crate::kek::{KekId, KeyEncryptionKey};
use crate::{CryptError, DataKey};
use async_trait::async_trait;
use aws_sdk_kms::primitives::Blob;
use aws_smithy_http_client::tls;
use std::time::Duration;
use zeroize::Zeroizing;

const CONTEXT: &str = "pgpitr-data-key";

pub struct KmsKek {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl KmsKek {
    /// KMS key `key_id` (an ID, ARN or alias), through the AWS chain.
    pub async fn new(key_id: &str) -> KmsKek {
        Self::load(key_id, None).await
    }

    /// At `endpoint` with static credentials (a test server).
    pub async fn at(key_id: &str, endpoint: &str, access_key: &str, secret_key: &str) -> KmsKek {
        let creds = aws_sdk_kms::config::Credentials::new(access_key, secret_key, None, None, "pgpitr-static");
        Self::load(key_id, Some((endpoint, creds))).await
    }

    async fn load(key_id: &str, at: Option<(&str, aws_sdk_kms::config::Credentials)>) -> KmsKek {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        // A KMS that accepts but never answers must not hang a writer: the
        // attempt fails as transient and the writer's retry takes over.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(5))
            .operation_timeout(Duration::from_secs(12))
            .build();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http).timeout_config(timeouts);
        if let Some((endpoint, creds)) = at {
            loader =
                loader.endpoint_url(endpoint).credentials_provider(creds).region(aws_config::Region::new("us-east-1"));
        }
        let sdk = loader.load().await;
        KmsKek { client: aws_sdk_kms::Client::new(&sdk), key_id: key_id.to_string() }
    }

    fn failed<E>(&self, what: &str, e: aws_sdk_kms::error::SdkError<E>) -> CryptError
    where
        E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        // One judgement of AWS errors for S3 and KMS alike: no answer,
        // throttling and 5xx are transient; a refusal is definite.
        let (transient, detail) = pgpitr_storage::aws_error(&e);
        let reason = format!("AWS KMS key {}: {what} failed: {detail}", self.key_id);
        if transient { CryptError::Unavailable(reason) } else { CryptError::Key(reason) }
    }
}

#[async_trait]
impl KeyEncryptionKey for KmsKek {
    fn id(&self) -> KekId {
        KekId { kind: "aws-kms".into(), id: self.key_id.clone() }
    }

    async fn wrap(&self, dk: &DataKey, label: &[u8]) -> Result<Vec<u8>, CryptError> {
        let out = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(dk.expose().to_vec()))
            .encryption_context(CONTEXT, hex::encode(label))
            .send()
            .await
            .map_err(|e| self.failed("Encrypt", e))?;
        let blob =
            out.ciphertext_blob.ok_or_else(|| CryptError::Key("AWS KMS Encrypt returned no ciphertext".into()))?;
        Ok(blob.into_inner())
    }

    async fn unwrap(&self, wrapped: &[u8], label: &[u8]) -> Result<DataKey, CryptError> {
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(wrapped.to_vec()))
            .encryption_context(CONTEXT, hex::encode(label))
            .send()
            .await
            .map_err(|e| self.failed("Decrypt", e))?;
        let plain = Zeroizing::new(out.plaintext.map(|b| b.into_inner()).unwrap_or_default());
        let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
            CryptError::Key(format!("AWS KMS key {} returned a data key of the wrong size", self.key_id))
        })?;
        Ok(DataKey::from_bytes(bytes))
    }
}
