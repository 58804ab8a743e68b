//! Retry behaviour over real backends with injected faults: transient
//! failures are retried until success, permanent ones fail at once, and
//! exhausted retries surface a transient error that says so.

use bytes::Bytes;
use pgpitr_storage::{FaultMode, Op, PutOutcome, Storage, StorageError};

use crate::common::{Faulty, faulty, local, s3};

async fn transient_faults_are_retried<S: Storage, G>(fx: Faulty<S, G>) {
    let (s, f) = (&fx.storage, &fx.faults);
    let value = Bytes::from_static(b"survives three failures");
    s.put("r/obj", value.clone()).await.expect("put is retried until it succeeds");
    assert_eq!(f.attempts(Op::Put, "r/obj"), 4);
    assert_eq!(s.get("r/obj").await.expect("get"), value);
    assert_eq!(f.attempts(Op::Get, "r/obj"), 4);
    assert_eq!(s.list("r/").await.expect("list").len(), 1);
    assert_eq!(f.attempts(Op::List, "r/"), 4);

    let mut up = s.start_upload("r/up").await.expect("start_upload");
    up.put_part(Bytes::from_static(b"part one,")).await.expect("put_part 0");
    up.put_part(Bytes::from_static(b"part two")).await.expect("put_part 1");
    assert_eq!(up.complete().await.expect("complete"), 17);
    assert_eq!(f.attempts(Op::StartUpload, "r/up"), 4);
    assert_eq!(f.attempts(Op::PutPart, "r/up#0"), 4);
    assert_eq!(f.attempts(Op::PutPart, "r/up#1"), 4);
    assert_eq!(f.attempts(Op::CompleteUpload, "r/up"), 4);
    assert_eq!(&s.get("r/up").await.expect("get upload")[..], b"part one,part two");

    s.delete_many(&["r/obj".to_owned(), "r/up".to_owned()]).await.expect("delete_many");
    assert_eq!(f.attempts(Op::DeleteMany, ""), 4);
    assert!(s.get("r/obj").await.unwrap_err().is_not_found());
    // The faults for this (op, key) are used up, and NotFound is an answer,
    // not a failure: one more attempt, no retries.
    assert_eq!(f.attempts(Op::Get, "r/obj"), 5);
}

async fn permanent_faults_fail_fast<S: Storage, G>(fx: Faulty<S, G>) {
    let err = fx.storage.put("p/obj", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().ends_with("(permanent)"), "{err}");
    assert_eq!(fx.faults.attempts(Op::Put, "p/obj"), 1, "a permanent error must not be retried");
    let err = fx.storage.check().await.unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(fx.faults.attempts(Op::Check, ""), 1);
}

async fn exhausted_retries_surface_transient<S: Storage, G>(fx: Faulty<S, G>) {
    let err = fx.storage.get("e/obj").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(fx.faults.attempts(Op::Get, "e/obj"), 3);
    let text = err.to_string();
    assert!(text.contains(r#""e/obj""#) && text.ends_with("(transient, retried 2 times)"), "{text}");
}

/// The first attempt succeeds on the backend but its response is "lost";
/// the retry finds the object and recognises its own bytes.
async fn lost_response_put_if_absent_is_created<S: Storage, G>(fx: Faulty<S, G>) {
    let mine = Bytes::from_static(b"lease: host-a pid 42 nonce 7f3a");
    let outcome = fx.storage.put_if_absent("l/lease", mine.clone()).await.expect("put_if_absent");
    assert_eq!(outcome, PutOutcome::Created);
    assert_eq!(fx.faults.attempts(Op::PutIfAbsent, "l/lease"), 2, "the lost response must have been retried");
    assert_eq!(fx.storage.get("l/lease").await.expect("get"), mine);

    // Someone else's object is still AlreadyExists after a lost response.
    fx.storage.put("l/other", Bytes::from_static(b"theirs")).await.expect("put");
    let outcome = fx.storage.put_if_absent("l/other", Bytes::from_static(b"mine")).await.expect("put_if_absent");
    assert_eq!(outcome, PutOutcome::AlreadyExists);
    assert_eq!(&fx.storage.get("l/other").await.expect("get")[..], b"theirs");

    // Deleting is idempotent, so a lost delete response is harmless.
    fx.storage.delete("l/lease").await.expect("delete");
    assert_eq!(fx.faults.attempts(Op::Delete, "l/lease"), 2);
    assert!(fx.storage.head("l/lease").await.unwrap_err().is_not_found());
}

async fn not_found_is_not_retried<S: Storage, G>(fx: Faulty<S, G>) {
    let err = fx.storage.head("n/missing").await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert_eq!(fx.faults.attempts(Op::Head, "n/missing"), 1);
    assert_eq!(fx.faults.injected(), 0);
}

async fn fraction_mode_injects_some_and_retries_hide_them<S: Storage, G>(fx: Faulty<S, G>) {
    for i in 0..40 {
        let key = format!("f/{i}");
        fx.storage.put(&key, Bytes::from(key.clone().into_bytes())).await.expect("put through 30% faults");
    }
    assert_eq!(fx.storage.list("f/").await.expect("list").len(), 40);
    let injected = fx.faults.injected();
    assert!(injected > 0, "a 30% fault rate over 40+ calls injected nothing");
    // Every injected fault cost exactly one extra attempt.
    assert_eq!(fx.faults.total_attempts(Op::Put) + fx.faults.total_attempts(Op::List), 41 + injected);
}

macro_rules! both_backends {
    ($($name:ident: $mode:expr, $attempts:expr;)*) => {
        mod local_backend {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let fx = local().await;
                    super::$name(faulty(fx.storage, fx._dir, $mode, $attempts)).await;
                }
            )*
        }
        mod s3_backend {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let fx = s3().await;
                    super::$name(faulty(fx.storage, fx.server, $mode, $attempts)).await;
                }
            )*
        }
    };
}

both_backends! {
    transient_faults_are_retried: FaultMode::FailFirst(3), 6;
    permanent_faults_fail_fast: FaultMode::FailAllPermanent, 6;
    exhausted_retries_surface_transient: FaultMode::FailFirst(100), 3;
    lost_response_put_if_absent_is_created: FaultMode::LoseFirst(1), 6;
    not_found_is_not_retried: FaultMode::FailFirst(0), 6;
    fraction_mode_injects_some_and_retries_hide_them: FaultMode::FailFraction(0.3), 20;
}
