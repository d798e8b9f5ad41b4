//! Receipts of tasks the service runs on its own (the storage node's `blob/accept` after our
//! PUT), fetched from the receipts endpoint: `GET <receipts_url><task CID>`, 404 until the
//! receipt exists. Production answers with the stored agent message that carried the receipt,
//! in one of two forms, and both are read:
//!
//! - the receipt reported under `report[<task>]`;
//! - a `ucan/conclude` invocation (in `execute`, or as the `ran` of a reported receipt) whose
//!   `nb.receipt` links the task's receipt, attached as blocks.

use cid::Cid;
use proto::Ipld;
use proto::car::CarLimits;
use proto::message::AgentMessage;
use proto::receipt::Receipt;
use proto::ucan::Delegation;

use crate::client::Client;
use crate::error::Error;
use crate::transport::Fetched;

/// The ability of a ucanto `ucan/conclude` invocation.
pub(crate) const UCAN_CONCLUDE: &str = "ucan/conclude";

impl Client {
    /// The receipt of `task` if the receipts endpoint has it yet.
    pub async fn fetch_receipt(&self, task: &Cid) -> Result<Option<Receipt>, Error> {
        let url = format!("{}{task}", self.config.receipts_url);
        let bytes = match self.transport.get(&url, &[]).await? {
            Fetched::NotFound => return Ok(None),
            Fetched::Body { bytes, .. } => bytes,
        };
        let message = AgentMessage::decode_bytes(bytes, &CarLimits::default())
            .map_err(|e| Error::protocol(format!("receipt of {task}"), e.to_string()))?;
        Ok(find_receipt(&message, task))
    }

    /// Fetches the receipt of `task` (an `ability` task) until it appears, at most
    /// `config.polling.attempts` times.
    pub async fn poll_receipt(&self, task: &Cid, ability: &str) -> Result<Receipt, Error> {
        let polling = self.config.polling;
        for attempt in 1..=polling.attempts.max(1) {
            if let Some(receipt) = self.fetch_receipt(task).await? {
                return Ok(receipt);
            }
            if attempt < polling.attempts {
                tokio::time::sleep(polling.interval).await;
            }
        }
        Err(Error::ReceiptTimeout {
            ability: ability.to_string(),
            task: task.to_string(),
            attempts: polling.attempts.max(1),
            url: self.config.receipts_url.clone(),
        })
    }
}

/// The receipt for `task` in a message, in either form.
pub(crate) fn find_receipt(message: &AgentMessage, task: &Cid) -> Option<Receipt> {
    if let Some(Ok(receipt)) = message.receipt(task) {
        return Some(receipt);
    }
    let mut concludes: Vec<Delegation> = message.invocations().unwrap_or_default();
    for cid in message.report().values() {
        if let Ok(r) = Receipt::from_store(cid, message.store().clone())
            && let Some(ran) = r.ran_invocation()
        {
            concludes.push(ran);
        }
    }
    concludes
        .iter()
        .filter_map(concluded_receipt)
        .find(|r| r.ran() == task)
}

/// The receipt a `ucan/conclude` invocation carries, when it is one and the blocks came along.
pub(crate) fn concluded_receipt(invocation: &Delegation) -> Option<Receipt> {
    let cap = invocation.ucan().capabilities().first()?;
    if cap.can != UCAN_CONCLUDE {
        return None;
    }
    let Some(Ipld::Link(root)) = cap.nb.as_ref()?.get("receipt") else {
        return None;
    };
    Receipt::from_store(root, invocation.blocks().clone()).ok()
}
