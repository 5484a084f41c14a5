//! Forgetting token ids once their token is refused as expired anyway.

use chrono::Utc;
use tracing::{debug, warn};

use super::DecisionService;

/// How often expired token uses are deleted.
const PURGE_EVERY_SECS: i64 = 600;

impl DecisionService {
    /// Every [`PURGE_EVERY_SECS`], on whichever batch comes first: a row can
    /// go once its token is refused as expired anyway (exp + leeway).
    pub(super) async fn purge_expired_token_uses(&self) {
        use std::sync::atomic::Ordering;
        let now = Utc::now().timestamp();
        let last = self.last_purge.load(Ordering::Relaxed);
        if now - last < PURGE_EVERY_SECS
            || self.last_purge.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        match self.store.purge_token_uses(now, self.token_leeway_secs + 60).await {
            Ok(0) => {}
            Ok(n) => debug!(message = "purged expired token uses", rows = n),
            Err(error) => warn!(message = "purging expired token uses failed; will try again", %error),
        }
    }
}
