//! AWS KMS as the key-encryption key, against a real KMS-speaking server
//! (moto) on 127.0.0.1.

use pgpitr_crypt::DataKey;
use pgpitr_crypt::kek::KeyEncryptionKey;
use pgpitr_crypt::keyring::KeyringEntry;
use pgpitr_crypt::kms::KmsKek;
use pgpitr_testkit::KmsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_wraps_data_keys_bound_to_their_ids() {
    let kms = KmsServer::start();
    let (a, b) = (kms.create_key(), kms.create_key());
    let ka = KmsKek::at(&a, &kms.endpoint(), "testing", "testing").await;
    let kb = KmsKek::at(&b, &kms.endpoint(), "testing", "testing").await;
    assert_eq!(ka.id().kind, "aws-kms");
    assert_eq!(ka.id().id, a);
    let dk = DataKey::generate().unwrap();
    let w = ka.wrap(&dk, b"id-1").await.unwrap();
    assert!(!w.windows(32).any(|x| x == dk.expose()), "the wrapping holds the key in plain");
    assert_eq!(ka.unwrap(&w, b"id-1").await.unwrap().expose(), dk.expose());
    // Another ID (encryption context): refused, named. (moto does not
    // check Decrypt's KeyId against the ciphertext's key, as AWS does.)
    let e = ka.unwrap(&w, b"id-2").await.unwrap_err().to_string();
    assert!(e.contains(&a) && e.contains("Decrypt failed"), "{e}");
    let wb = kb.wrap(&dk, b"id-1").await.unwrap();
    assert_ne!(wb, w, "each KMS key wraps differently");
    // A keyring entry made with KMS opens with it, and rotates to a key file.
    let (_, dk2, e) = KeyringEntry::create(&ka, "2026-12-06T00:00:00Z".into()).await.unwrap();
    assert_eq!(e.open(&[&ka]).await.unwrap().expose(), dk2.expose());
    // A key that does not exist: a definite error naming it.
    let missing =
        KmsKek::at("arn:aws:kms:us-east-1:123456789012:key/none", &kms.endpoint(), "testing", "testing").await;
    let e = missing.wrap(&dk, b"x").await.unwrap_err();
    assert!(!e.is_transient() && e.to_string().contains("key/none"), "{e}");
}

/// KMS unreachable: transient, so that a stream waits and retries.
#[tokio::test]
async fn an_unreachable_kms_is_transient() {
    let port = pgpitr_testkit::free_port();
    let k = KmsKek::at("alias/x", &format!("http://127.0.0.1:{port}"), "testing", "testing").await;
    let e = k.wrap(&DataKey::generate().unwrap(), b"x").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}
