//! `pgpitr stream --metrics-addr`: Prometheus (OpenMetrics) metrics and a
//! health check over HTTP, read from the archiver's live counters at each
//! scrape, so serving them costs the stream nothing in between.

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use pgpitr_backup::ScheduleStats;
use pgpitr_stream::StreamStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `/healthz` fails once WAL has waited this long for storage: far beyond
/// the flush interval, yet before a synchronous primary's commits pile up
/// for minutes unnoticed.
pub const UNHEALTHY_UNSTORED: Duration = Duration::from_secs(60);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoint reports.
#[derive(Debug, Clone)]
pub struct Sources {
    pub stream: Arc<StreamStats>,
    pub schedule: Option<Arc<ScheduleStats>>,
    pub drills: Option<Arc<crate::drills::DrillStats>>,
    pub copy: Option<Arc<pgpitr_repo::mirror::MirrorStats>>,
}

#[derive(Debug)]
struct Live(Sources);

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

fn secs(us: i64) -> f64 {
    us as f64 / 1e6
}

/// Seconds the oldest unstored WAL has waited; 0 when all is stored.
fn unstored_age(stats: &StreamStats, now_us: i64) -> f64 {
    match stats.unstored_since_us.load(Ordering::Relaxed) {
        0 => 0.0,
        since => secs((now_us - since).max(0)),
    }
}

fn gauge<V>(e: &mut DescriptorEncoder, name: &str, help: &str, v: V) -> std::fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for Live {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0.stream;
        let now = now_us();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let (received, durable, server) = (load(&s.received_lsn), load(&s.durable_lsn), load(&s.server_lsn));
        let up = i64::from(s.streaming.load(Ordering::Relaxed));
        gauge(&mut e, "pgpitr_stream_up", "1 while replicating from the server, 0 while connecting or retrying", up)?;
        gauge(
            &mut e,
            "pgpitr_stream_timeline",
            "Timeline being streamed",
            i64::from(s.timeline.load(Ordering::Relaxed)),
        )?;
        gauge(&mut e, "pgpitr_stream_received_lsn", "WAL position received from the server (bytes)", received as f64)?;
        gauge(&mut e, "pgpitr_stream_durable_lsn", "WAL position durable in the repository (bytes)", durable as f64)?;
        if server != 0 {
            gauge(
                &mut e,
                "pgpitr_stream_server_lsn",
                "Server's end of WAL at its last keepalive (bytes)",
                server as f64,
            )?;
        }
        gauge(
            &mut e,
            "pgpitr_stream_lag_bytes",
            "WAL the server has that is not yet durable in the repository",
            server.max(received).saturating_sub(durable) as f64,
        )?;
        gauge(
            &mut e,
            "pgpitr_stream_unstored_age_seconds",
            "How long the oldest received WAL not yet durable has waited; 0 when all is stored",
            unstored_age(s, now),
        )?;
        let commit = s.durable_commit_us.load(Ordering::Relaxed);
        if commit != 0 {
            gauge(
                &mut e,
                "pgpitr_stream_durable_commit_timestamp_seconds",
                "Commit time of the newest commit this stream made durable: the latest restorable time",
                secs(commit),
            )?;
        }
        let advanced = s.durable_advanced_us.load(Ordering::Relaxed);
        if advanced != 0 {
            gauge(
                &mut e,
                "pgpitr_stream_durable_advance_timestamp_seconds",
                "When the durable position last moved",
                secs(advanced),
            )?;
        }
        counter(&mut e, "pgpitr_stream_received_bytes", "WAL bytes received", load(&s.received_bytes))?;
        counter(&mut e, "pgpitr_stream_stored_objects", "WAL objects and journal appends stored", load(&s.uploads))?;
        counter(&mut e, "pgpitr_stream_reconnects", "Reconnections after an interrupted stream", load(&s.reconnects))?;
        counter(&mut e, "pgpitr_stream_merges", "Merges of the unfinished segment's pieces", load(&s.merges))?;
        gauge(
            &mut e,
            "pgpitr_stream_open_segment_objects",
            "Pieces holding the unfinished segment (what a restart or wal-fetch reads)",
            load(&s.open_segment_objects) as f64,
        )?;
        counter(
            &mut e,
            "pgpitr_stream_commit_index_errors",
            "WAL the commit-time index could not parse (the WAL itself is stored regardless)",
            load(&s.scan_errors),
        )?;
        if let Some(b) = &self.0.schedule {
            counter(&mut e, "pgpitr_backup_succeeded", "Scheduled base backups completed", load(&b.succeeded))?;
            counter(&mut e, "pgpitr_backup_failed", "Scheduled base backups that failed", load(&b.failed))?;
            counter(
                &mut e,
                "pgpitr_backup_expire_failed",
                "Retention runs after a scheduled backup that failed",
                load(&b.expire_failed),
            )?;
            let last = b.last_success_us.load(Ordering::Relaxed);
            if last != 0 {
                gauge(
                    &mut e,
                    "pgpitr_backup_last_success_timestamp_seconds",
                    "When the last successful scheduled backup completed",
                    secs(last),
                )?;
                gauge(
                    &mut e,
                    "pgpitr_backup_last_duration_seconds",
                    "How long the last successful scheduled backup took",
                    load(&b.last_duration_ms) as f64 / 1e3,
                )?;
            }
        }
        if let Some(d) = &self.0.drills {
            counter(
                &mut e,
                "pgpitr_drill_failed",
                "Scheduled restore drills that failed or could not run",
                load(&d.failed),
            )?;
            let last = d.last_success_us.load(Ordering::Relaxed);
            if last != 0 {
                gauge(
                    &mut e,
                    "pgpitr_drill_last_success_timestamp_seconds",
                    "When the newest passed restore drill finished",
                    secs(last),
                )?;
            }
            let rto = load(&d.last_rto_ms);
            if rto != 0 {
                gauge(
                    &mut e,
                    "pgpitr_drill_last_rto_seconds",
                    "RTO of the newest restore drill: plan, download and replay",
                    rto as f64 / 1e3,
                )?;
            }
        }
        if let Some(c) = &self.0.copy {
            copy_metrics(&mut e, c, now)?;
        }
        Ok(())
    }
}

/// `--copy-to`: how far the second repository is behind.
fn copy_metrics(e: &mut DescriptorEncoder, c: &pgpitr_repo::mirror::MirrorStats, now: i64) -> std::fmt::Result {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let oldest = c.oldest_pending_us.load(Ordering::Relaxed);
    gauge(
        e,
        "pgpitr_copy_lag_seconds",
        "How long the oldest write the copy lacks has been stored in the primary; 0 when in step",
        if oldest == 0 { 0.0 } else { secs((now - oldest).max(0)) },
    )?;
    gauge(e, "pgpitr_copy_lag_bytes", "Bytes stored in the primary that the copy lacks", load(&c.lag_bytes) as f64)?;
    counter(
        e,
        "pgpitr_copy_copied_bytes",
        "Bytes written to the copy as the primary was written",
        load(&c.copied_bytes),
    )?;
    counter(e, "pgpitr_copy_failures", "Writes to the copy that failed (each is retried)", load(&c.failures))?;
    gauge(
        e,
        "pgpitr_copy_pass_running",
        "1 while a full copy pass (at start, then every --copy-pass-every) runs",
        i64::from(c.catching_up.load(Ordering::Relaxed)),
    )?;
    let last = c.last_pass_us.load(Ordering::Relaxed);
    if last != 0 {
        gauge(e, "pgpitr_copy_last_pass_timestamp_seconds", "When the last full copy pass completed", secs(last))?;
    }
    Ok(())
}

/// Binds the listener before streaming starts, so a taken or bad address
/// is a start-up error.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen for metrics on {addr}"))
}

/// Serves `/metrics` and `/healthz` until cancelled.
pub fn serve(listener: TcpListener, sources: Sources, slot: &str, cancel: CancellationToken) {
    let mut registry = Registry::with_labels([(Cow::Borrowed("slot"), Cow::Owned(slot.to_owned()))].into_iter());
    registry.register(
        "pgpitr_build",
        "pgpitr version",
        Info::new(vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
    );
    registry.register_collector(Box::new(Live(sources.clone())));
    let registry = Arc::new(registry);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics on /metrics and health on /healthz");
    }
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, do not spin.
                        tracing::warn!("metrics endpoint: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (registry, stats) = (registry.clone(), sources.stream.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let resp = respond(&req, &registry, &stats);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                // A client that never finishes its headers is dropped.
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = conn.await;
            });
        }
    });
}

fn respond<B>(req: &Request<B>, registry: &Registry, stats: &StreamStats) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => reply(StatusCode::OK, OPENMETRICS, body),
                Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "cannot encode metrics\n".into()),
            }
        }
        "/healthz" => match health(stats, now_us()) {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ok: streaming\n".into()),
            Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics or /healthz\n".into()),
    }
}

/// Healthy: replicating, and no received WAL has waited for storage
/// longer than [`UNHEALTHY_UNSTORED`].
fn health(stats: &StreamStats, now_us: i64) -> Result<(), String> {
    if !stats.streaming.load(Ordering::Relaxed) {
        return Err("not streaming: connecting to the server or waiting to retry (see the log)".into());
    }
    let age = unstored_age(stats, now_us);
    if age > UNHEALTHY_UNSTORED.as_secs_f64() {
        return Err(format!("WAL received {age:.0} s ago is not yet durable in the repository (see the log)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_needs_streaming_and_fresh_storage() {
        let s = StreamStats::default();
        let now = 1_000_000_000_000;
        assert!(health(&s, now).unwrap_err().starts_with("not streaming"));
        s.streaming.store(true, Ordering::Relaxed);
        assert_eq!(health(&s, now), Ok(()));
        s.unstored_since_us.store(now - 59_000_000, Ordering::Relaxed);
        assert_eq!(health(&s, now), Ok(()));
        s.unstored_since_us.store(now - 61_000_000, Ordering::Relaxed);
        assert!(health(&s, now).unwrap_err().contains("61 s ago"));
    }
}
