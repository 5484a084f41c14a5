//! Which grant signing keys are in use, and until when (see the migration
//! `grant_keys`): the JWKS is read from here, so every instance publishes
//! the keys of all instances.

use sqlx::Row;

use super::{Store, StoreError};

/// A key published in the JWKS: its kid and public JWK (JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    pub kid: String,
    pub jwk: String,
    /// The latest expiry (Unix seconds) of any grant it signed or may sign.
    pub signs_until: i64,
}

impl Store {
    /// Records that `instance` may sign grants expiring up to `until` with
    /// `kid` (`jwk` its public half). Refuses a kid already recorded with
    /// another key: data hosts pick the key by kid, so two keys under one
    /// kid would make valid grants fail to verify.
    pub async fn lease_grant_key(&self, kid: &str, jwk: &str, instance: &str, until: i64) -> Result<(), StoreError> {
        let other = sqlx::query("SELECT jwk FROM grant_keys WHERE kid = $1 AND jwk <> $2 LIMIT 1")
            .bind(kid)
            .bind(jwk)
            .fetch_optional(&self.pool)
            .await?;
        if other.is_some() {
            return Err(StoreError::Fatal(format!(
                "grant key id {kid} is already published for another key: give the new key a file name of its own"
            )));
        }
        sqlx::query(
            "INSERT INTO grant_keys (kid, instance, jwk, signs_until) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (kid, instance) DO UPDATE SET signs_until = excluded.signs_until",
        )
        .bind(kid)
        .bind(instance)
        .bind(jwk)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keys some instance's grants may still be valid under at `now`,
    /// by kid.
    pub async fn published_grant_keys(&self, now: i64) -> Result<Vec<PublishedKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, MIN(jwk), MAX(signs_until) FROM grant_keys GROUP BY kid HAVING MAX(signs_until) > $1 ORDER BY kid",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(PublishedKey { kid: r.try_get(0)?, jwk: r.try_get(1)?, signs_until: r.try_get(2)? }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_published_while_any_instance_may_have_signed_with_it_and_a_kid_names_one_key() {
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        store.lease_grant_key("k1", "{\"x\":\"a\"}", "i1", 100).await.unwrap();
        store.lease_grant_key("k1", "{\"x\":\"a\"}", "i2", 300).await.unwrap();
        store.lease_grant_key("k2", "{\"x\":\"b\"}", "i1", 200).await.unwrap();
        // i1 stops and lowers its own bound; i2's still holds k1.
        store.lease_grant_key("k1", "{\"x\":\"a\"}", "i1", 50).await.unwrap();
        let kids = |keys: Vec<PublishedKey>| keys.into_iter().map(|k| (k.kid, k.signs_until)).collect::<Vec<_>>();
        assert_eq!(kids(store.published_grant_keys(150).await.unwrap()), [("k1".into(), 300), ("k2".into(), 200)]);
        assert_eq!(kids(store.published_grant_keys(250).await.unwrap()), [("k1".to_owned(), 300)]);
        assert!(store.published_grant_keys(300).await.unwrap().is_empty());
        let clash = store.lease_grant_key("k1", "{\"x\":\"other\"}", "i3", 400).await.unwrap_err();
        assert!(clash.to_string().contains("already published for another key"), "{clash}");
    }
}
