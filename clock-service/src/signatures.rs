//! Invocation signatures of concurrent requests, verified together.
//!
//! Every invocation carries an Ed25519 signature, and verifying it is the largest single cost
//! of a request. Verified one by one, each signature costs a double-scalar multiplication;
//! verified together ([`proto::principal::verify_batch`]), n signatures share one multi-scalar
//! multiplication, about half the cost per signature at n = 16 and less again when several come
//! from one key (an agent polling its clocks). The verdicts are the ones single verification
//! gives (ZIP215 rules on both paths), so batching changes no outcome and no error.
//!
//! A [`BatchVerifier`] queues the checks requests hand it and one drainer task verifies them.
//! The drainer first yields, so the requests already readable on its worker thread reach their
//! own check and join the batch; then it takes everything queued (up to the batch limit),
//! verifies it, answers each request, and goes on while checks keep arriving. A lone request
//! therefore waits only for one yield, and under load the batches grow by themselves with the
//! number of requests in flight. When no drainer is running, the next check starts one.
//!
//! If a drainer dies (a panic in a batch), its requests get no verdict and their validators
//! verify the signature themselves, and the next check starts a new drainer.

use std::sync::{Arc, Mutex, PoisonError};

use proto::principal::{SignatureCheck, verify_batch};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Batches the signature checks of concurrent requests. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct BatchVerifier {
    queue: Mutex<Queue>,
    max_batch: usize,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// A drainer task is running (or about to). Invariant: when false, `waiting` is empty.
    draining: bool,
}

#[derive(Debug)]
struct Waiting {
    check: SignatureCheck,
    answer: oneshot::Sender<bool>,
}

impl BatchVerifier {
    /// A verifier that checks at most `max_batch` signatures in one batch (at least 2).
    pub fn new(max_batch: usize, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::default(),
            max_batch: max_batch.max(2),
            metrics,
        })
    }

    /// The verdict on `check`, reached in a batch with other requests' checks; `None` when the
    /// batch it was in failed to finish (the caller then verifies it itself). Must be called
    /// within a Tokio runtime.
    pub async fn verify(self: &Arc<Self>, check: SignatureCheck) -> Option<bool> {
        let (answer, verdict) = oneshot::channel();
        let start = {
            let mut q = self.lock();
            q.waiting.push(Waiting { check, answer });
            !std::mem::replace(&mut q.draining, true)
        };
        if start {
            tokio::spawn(self.clone().drain());
        }
        verdict.await.ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Every critical section leaves the queue consistent; a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn drain(self: Arc<Self>) {
        let _stopped = Stopped(&self);
        loop {
            // Let the requests already runnable on this thread reach their checks first.
            tokio::task::yield_now().await;
            let batch: Vec<Waiting> = {
                let mut q = self.lock();
                if q.waiting.is_empty() {
                    q.draining = false;
                    return;
                }
                let n = q.waiting.len().min(self.max_batch);
                q.waiting.drain(..n).collect()
            };
            self.metrics
                .signature_batch_size
                .observe(batch.len() as f64);
            let (checks, answers): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|w| (w.check, w.answer)).unzip();
            let verdicts = verify_batch(checks);
            for (answer, valid) in answers.into_iter().zip(verdicts) {
                // The request may have gone (timed out, connection closed): nothing to tell.
                let _ = answer.send(valid);
            }
        }
    }
}

/// Clears the draining flag if a drainer stops without doing so itself (it panicked), so the
/// next check starts another.
struct Stopped<'a>(&'a BatchVerifier);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut q = self.0.lock();
            q.draining = false;
            // Their answers are dropped: those requests verify their signatures themselves.
            q.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::principal::Ed25519Signer;

    fn check(signer: &Ed25519Signer, msg: &[u8], signed: &[u8]) -> SignatureCheck {
        SignatureCheck::new(signer.public_key(), msg, &signer.sign(signed)).unwrap()
    }

    fn metrics() -> Metrics {
        Metrics::register(&mut prometheus_client::registry::Registry::default())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_get_their_own_verdicts() {
        let verifier = BatchVerifier::new(16, metrics());
        let keys: Vec<_> = (0..4u8)
            .map(|i| Ed25519Signer::from_seed(&[i; 32]))
            .collect();
        let mut tasks = Vec::new();
        for i in 0..200usize {
            let v = verifier.clone();
            let key = keys[i % keys.len()].clone();
            tasks.push(tokio::spawn(async move {
                let msg = format!("message {i}");
                // Every seventh signature is over other bytes, so it is invalid.
                let signed = if i % 7 == 3 {
                    format!("tampered {i}")
                } else {
                    msg.clone()
                };
                let got = v
                    .verify(check(&key, msg.as_bytes(), signed.as_bytes()))
                    .await;
                (i, got)
            }));
        }
        for t in tasks {
            let (i, got) = t.await.unwrap();
            assert_eq!(got, Some(i % 7 != 3), "check {i}");
        }
        // The drainer answers, then finds the queue empty and stops.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while verifier.lock().draining {
            assert!(
                std::time::Instant::now() < deadline,
                "the drainer did not stop"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(verifier.lock().waiting.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_form_under_load_and_a_lone_check_is_answered() {
        let m = metrics();
        let verifier = BatchVerifier::new(64, m.clone());
        let key = Ed25519Signer::from_seed(&[9; 32]);
        // A lone check.
        assert_eq!(
            verifier.verify(check(&key, b"one", b"one")).await,
            Some(true)
        );
        // Many at once: fewer batches than checks.
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let v = verifier.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let msg = format!("m{i}");
                    v.verify(check(&key, msg.as_bytes(), msg.as_bytes())).await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(true));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &{
            let mut r = prometheus_client::registry::Registry::default();
            r.register("b", "b", m.signature_batch_size.clone());
            r
        })
        .unwrap();
        let count: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("b_count "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(count < 65.0, "65 checks in {count} batches");
    }
}
