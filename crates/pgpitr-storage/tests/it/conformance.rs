//! The shared conformance suite, run against every backend, and against
//! every backend behind injected transient faults plus retries.

macro_rules! suite {
    ($fixture:ident) => {
        suite!(@each $fixture;
            check_succeeds, put_get_roundtrip, overwrite, put_if_absent, get_range, head, not_found,
            list_nested, list_many, list_pages, list_dirs, list_shallow, delete_idempotent, delete_many, multipart_upload,
            small_upload, upload_abort, invalid_keys, no_temp_objects_listed, overwrite_while_reading);
    };
    (@each $fixture:ident; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fx = crate::common::$fixture().await;
                pgpitr_storage::conformance::$name(&fx.storage).await;
                fx.after();
            }
        )*
    };
}

mod local {
    suite!(local);
    suite!(@each local; prefix_is_not_an_object, put_if_absent_race, concurrent_writers, journal);
}

// The simulations' backend holds every case the local one does.
mod memory {
    suite!(memory);
    suite!(@each memory; prefix_is_not_an_object, put_if_absent_race, concurrent_writers, journal);
}

// `prefix_is_not_an_object`, `put_if_absent_race` and `concurrent_writers`
// hold on AWS S3 but not on s3s-fs (HTTP 500 for a GET of a directory;
// If-None-Match checked without a lock; data and checksum of racing PUTs
// stored separately), so the S3 runs leave them out; see their docs.
// Appends are not retried (a failed one leaves an unknown tail), so the
// journal case runs without injected faults only.
mod s3 {
    suite!(s3);
    suite!(@each s3; journal);
}

mod local_faulty {
    suite!(local_faulty);
    suite!(@each local_faulty; prefix_is_not_an_object, put_if_absent_race, concurrent_writers);
}

mod s3_faulty {
    suite!(s3_faulty);
}
