//! A write-rate cap on a tokio stream ([`Throttled`], the `--limit-rate`
//! of `ferry send`), for shared links and for tests that need a transfer
//! to take a while, and the parser of its rates ([`parse_rate`]).
//!
//! The pacing is a [`TokenBucket`] in bytes; the tokio timer says when.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::TokenBucket;

/// The least a write passes on, unless the buffer is smaller: a TLS
/// record's worth.
const MIN_WRITE: f64 = 16.0 * 1024.0;

/// A stream whose writes are capped at `rate` bytes per second. Reads pass
/// through.
pub struct Throttled<S> {
    inner: S,
    /// Bytes that may be written; starts full (one burst).
    bucket: TokenBucket,
    burst: f64,
    /// The bucket's time origin.
    origin: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> Throttled<S> {
    /// Caps writes to `rate` bytes per second (at least 1 KiB/s), in bursts
    /// of a twentieth of a second's worth (at least 16 KiB).
    pub fn new(inner: S, rate: u64) -> Self {
        let rate = rate.max(1024) as f64;
        let burst = (rate / 20.0).max(16.0 * 1024.0);
        Throttled {
            inner,
            bucket: TokenBucket::new(rate, burst, Duration::ZERO),
            burst,
            origin: Instant::now(),
            sleep: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Whole writes of at least MIN_WRITE (or the buffer, if smaller):
        // the bucket refills by a few bytes between two calls, and writing
        // those at once made TLS records (and TCP segments) of a few dozen
        // bytes each, five times the data on the wire at 8 MiB/s.
        let want = (buf.len() as f64).min(MIN_WRITE.min(this.burst)).max(1.0);
        let (now, allowance) = loop {
            if let Some(sleep) = this.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }
            let now = this.origin.elapsed();
            let allowance = this.bucket.available(now);
            if allowance >= want {
                break (now, allowance);
            }
            let wait = this.bucket.wait_for(now, want);
            this.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        };
        let n = buf.len().min(allowance as usize).max(1);
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..n]))?;
        this.bucket.take_debt(now, written as f64);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Parses "10M", "512k", "1.5G", "1000" (bytes per second; k/M/G are 1024-based).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a rate such as 10M, 512k or 1000"))?;
    let factor = match unit
        .trim()
        .trim_end_matches("/s")
        .trim_end_matches(['B', 'b'])
    {
        "" => 1.0,
        "k" | "K" | "Ki" => 1024.0,
        "m" | "M" | "Mi" => 1024.0 * 1024.0,
        "g" | "G" | "Gi" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown unit {other:?} in {text:?}; use k, M or G")),
    };
    let rate = number * factor;
    if !(rate.is_finite() && rate >= 1024.0) {
        return Err(format!(
            "{text:?} is too small; the least is 1k (1024 bytes per second)"
        ));
    }
    Ok(rate as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("1000k"), Ok(1_024_000));
        assert_eq!(parse_rate("10M"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_rate("1.5G"), Ok(1024 * 1024 * 1536));
        assert_eq!(parse_rate("2048"), Ok(2048));
        assert_eq!(parse_rate("10MB/s"), Ok(10 * 1024 * 1024));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10X").is_err());
        assert!(parse_rate("10").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn writes_are_capped() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut sink)
                .await
                .unwrap();
            sink.len()
        });
        let mut throttled = Throttled::new(a, 100 * 1024);
        let start = Instant::now();
        throttled.write_all(&vec![7u8; 300 * 1024]).await.unwrap();
        throttled.shutdown().await.unwrap();
        drop(throttled);
        let took = start.elapsed();
        assert_eq!(reader.await.unwrap(), 300 * 1024);
        // 300 KiB at 100 KiB/s with a 16 KiB burst: close to 2.84 s of virtual time.
        assert!(took >= Duration::from_millis(2700), "{took:?}");
        assert!(took <= Duration::from_millis(3100), "{took:?}");
    }

    /// Counts the writes that reach it.
    struct Writes(Vec<usize>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_are_whole_records_not_the_few_bytes_that_came_in_meanwhile() {
        // Real time: between two calls the bucket gains a few bytes.
        let mut throttled = Throttled::new(Writes(Vec::new()), 8 * 1024 * 1024);
        throttled.write_all(&vec![7u8; 2 << 20]).await.unwrap();
        let writes = &throttled.inner.0;
        assert_eq!(writes.iter().sum::<usize>(), 2 << 20);
        let small = writes.iter().filter(|&&n| n < 16 * 1024).count();
        assert!(
            small <= 1,
            "{small} writes below 16 KiB of {}",
            writes.len()
        );
    }
}
