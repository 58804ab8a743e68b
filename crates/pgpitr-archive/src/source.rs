//! Where a [`crate::WalWriter`] gets WAL and reports the durable position:
//! the server's replication stream, or a simulation of one.

use crate::StreamError;
use pgpitr_pgwire::{ReplicationStream, StreamMessage};
use pgpitr_types::Lsn;
use std::future::Future;

pub trait WalSource {
    /// The next message. Cancel-safe: a message is never lost when the
    /// future is dropped before it is ready.
    fn recv(&mut self) -> impl Future<Output = Result<StreamMessage, StreamError>> + Send;

    /// A standby status update: WAL up to `flush` is durable.
    fn report(&mut self, write: Lsn, flush: Lsn, apply: Lsn) -> impl Future<Output = Result<(), StreamError>> + Send;

    /// Ends the stream (the connection stays usable where it can).
    fn end(self) -> impl Future<Output = Result<(), StreamError>> + Send;
}

impl WalSource for ReplicationStream<'_> {
    async fn recv(&mut self) -> Result<StreamMessage, StreamError> {
        Ok(self.next().await?)
    }

    async fn report(&mut self, write: Lsn, flush: Lsn, apply: Lsn) -> Result<(), StreamError> {
        Ok(self.send_status(write, flush, apply, false).await?)
    }

    async fn end(self) -> Result<(), StreamError> {
        Ok(self.finish().await?)
    }
}

/// A source lent to the writer, to be looked at after it ends.
impl<S: WalSource + Send> WalSource for &mut S {
    async fn recv(&mut self) -> Result<StreamMessage, StreamError> {
        (**self).recv().await
    }

    async fn report(&mut self, write: Lsn, flush: Lsn, apply: Lsn) -> Result<(), StreamError> {
        (**self).report(write, flush, apply).await
    }

    async fn end(self) -> Result<(), StreamError> {
        Ok(())
    }
}
